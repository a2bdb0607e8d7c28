"""A pipeline built from a folder's configs alone, with meta weights on the emulated MPS device.

Nothing of the weights is read or allocated: each model is constructed under ``torch.device("meta")``
from its ``config.json`` and moved to the emulated device with meta payloads, so a 7 GB SDXL folder
(or a folder holding only the configs) becomes a pipeline that :func:`pytest_mps.plan.trace.traced_call`
runs at any size in seconds. Tokenizers, schedulers and image processors are small and load for real.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any

__all__ = ["SKIPPED_COMPONENTS", "PlanInputError", "load_meta_pipeline"]

#: Components left out of a plan: the safety checker reads its scores back to the CPU as numpy
#: (values a meta trace does not have) and holds little memory next to the denoiser and the VAE.
SKIPPED_COMPONENTS = ("safety_checker",)


class PlanInputError(ValueError):
    """The folder cannot be planned; the message is one line: the cause and a fix hint."""


def _index(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise PlanInputError(f"pipeline folder {path} does not exist; check the path")
    if not path.is_dir():
        raise PlanInputError(
            f"{path} is a file, not a pipeline folder; pass the folder holding model_index.json"
        )
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise PlanInputError(
            f"{path} is not a Diffusers pipeline folder (no model_index.json); save one with "
            "pipe.save_pretrained(folder)"
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise PlanInputError(f"{index_file} is not valid JSON ({exc}); re-save the pipeline") from None
    if not isinstance(index, dict) or "_class_name" not in index:
        raise PlanInputError(f"{index_file} names no pipeline class (_class_name); re-save the pipeline")
    return index


def _component(path: Path, name: str, library: str, class_name: str, dtype: Any) -> Any:
    import importlib

    import torch

    module = importlib.import_module(library)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PlanInputError(
            f"{path}: component {name!r} names {library}.{class_name}, which is not installed"
        )
    folder = path / name
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if library == "diffusers":
                config = cls.load_config(folder)
                with torch.device("meta"):
                    model = cls.from_config(config)
            else:
                config = cls.config_class.from_pretrained(folder)
                with torch.device("meta"):
                    model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
        if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
            model = model.to(dtype=dtype)
        return model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(folder)


def load_meta_pipeline(path: str | Path, *, dtype: Any = None) -> Any:
    """The pipeline saved in ``path`` with meta weights in ``dtype`` (default float32), already on the
    emulated MPS device (``pipe.device.type == "mps"``), in eval mode, without progress bars.

    Raises:
        PlanInputError: a missing folder, a folder without ``model_index.json``, a class that is not
            installed, or a component that cannot be built from its config (one line each).
    """
    import torch
    from diffusers.utils import logging as diffusers_logging

    folder = Path(path).expanduser()
    index = _index(folder)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # dtype-cast and config notices about weights never read
    try:
        return _build(folder, index, dtype or torch.float32)
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _build(folder: Path, index: dict[str, Any], dtype: Any) -> Any:
    import diffusers

    from pytest_mps.emulation.shape_trace import MetaEmulation

    pipeline_cls = getattr(diffusers, str(index["_class_name"]), None)
    if pipeline_cls is None:
        raise PlanInputError(
            f"{folder}: pipeline class {index['_class_name']} is not in the installed diffusers"
        )
    accepted = inspect.signature(pipeline_cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or name not in accepted:
            continue
        if not (isinstance(entry, list) and len(entry) == 2):
            kwargs[name] = entry  # a config value such as requires_safety_checker
            continue
        library, class_name = entry
        if library is None or class_name is None or name in SKIPPED_COMPONENTS:
            kwargs[name] = None
            continue
        try:
            kwargs[name] = _component(folder, name, str(library), str(class_name), dtype)
        except PlanInputError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PlanInputError(
                f"{folder}: cannot build component {name!r} ({class_name}) from its config: "
                f"{type(exc).__name__}: {first}"
            ) from None
    if "requires_safety_checker" in accepted and kwargs.get("safety_checker") is None:
        kwargs["requires_safety_checker"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pipe = pipeline_cls(**kwargs)
        except Exception as exc:
            raise PlanInputError(
                f"{folder}: cannot assemble {pipeline_cls.__name__} from its components "
                f"({type(exc).__name__}: {exc}); is the folder complete?"
            ) from None
        with MetaEmulation():
            pipe.to("mps")  # meta payloads stay meta: nothing is allocated
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe
