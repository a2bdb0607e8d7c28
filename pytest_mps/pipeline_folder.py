"""Whether a folder is a loadable Diffusers pipeline, told in one line that names the file at fault.

:func:`check_folder` refuses, before anything is loaded:

- a missing path, a file, a folder without ``model_index.json``, weights only in pickled files (unless
  the caller opts in), and (``verify_safetensors``) a safetensors file whose header is corrupt or whose
  data is truncated;
- (``deep``) a ``model_index.json`` or component JSON file that does not parse, a pipeline or component
  class the installed Diffusers or Transformers does not have, a component entry that is not
  ``[library, class]``, a declared component folder that is missing, a pipeline that lacks a component
  its class requires, a scheduler config its class refuses, and model weights that do not match the
  config: each model is built from its config on the ``meta`` device (no memory, no weights read) and
  every floating-point tensor in its safetensors files is compared by shape with what the config builds.

``deep`` imports torch and Diffusers (and Transformers for its components); the rest imports nothing
heavy. Components of other libraries (custom code) are not inspected. Quantized components are not
compared by shape (their packed tensors have other shapes by design).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["PipelineLoadError", "check_folder", "check_structure"]

_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_MAX_JSON = 16 << 20  # a config or index is a few KB; a tokenizer.json a few MB
_MAX_HEADER = 100 << 20  # safetensors' own limit on a header
_FLOAT_DTYPES = frozenset(("F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"))
_LIBRARIES = ("diffusers", "transformers")


class PipelineLoadError(ValueError):
    """A pipeline source cannot be loaded; the message is one line: the cause and a fix hint."""


def one_line(text: str, limit: int = 600) -> str:
    """``text`` with every run of whitespace (newlines, tabs) as one space, cut at ``limit``."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_folder(
    path: Path, *, allow_pickle: bool, verify_safetensors: bool = False, deep: bool = False
) -> None:
    """Refuse, with a one-line :class:`PipelineLoadError` naming the file, a folder that cannot be a
    safe, loadable pipeline (see the module docstring). ``verify_safetensors``: parse every safetensors
    header and check the data is all there. ``deep``: :func:`check_structure` too."""
    _check_basics(path, allow_pickle=allow_pickle)
    if verify_safetensors:
        from safetensors import safe_open

        for weights in sorted(path.rglob("*.safetensors")):
            _safetensors_header(weights)
            try:  # the library's own checks too (dtypes, overlapping offsets), still without the data
                with safe_open(str(weights), framework="numpy") as handle:
                    handle.keys()
            except Exception as exc:
                raise _corrupt_weights(weights, one_line(str(exc), 200)) from None
    if deep:
        check_structure(path)


def _check_basics(path: Path, *, allow_pickle: bool) -> None:
    if not path.exists():
        raise PipelineLoadError(f"pipeline folder {path} does not exist; check the path")
    if not path.is_dir():
        raise PipelineLoadError(
            f"{path} is a file, not a pipeline folder; pass the folder holding model_index.json"
        )
    if not (path / "model_index.json").is_file():
        raise PipelineLoadError(
            f"{path} is not a Diffusers pipeline folder (no model_index.json); save one with "
            "pipe.save_pretrained(folder)"
        )
    weights = [p for p in path.rglob("*") if p.is_file()]
    safe = [p for p in weights if p.suffix == ".safetensors"]
    pickled = [p for p in weights if p.suffix in _PICKLED_SUFFIXES]
    if pickled and not allow_pickle:
        components_with_only_pickle = sorted({p.parent.name for p in pickled} - {p.parent.name for p in safe})
        if components_with_only_pickle:
            raise PipelineLoadError(
                f"{path}: weights of {', '.join(components_with_only_pickle)} exist only as pickled files "
                f"({', '.join(sorted({p.name for p in pickled}))}); refusing to unpickle them "
                "(it can run code). "
                "Convert them to safetensors, or opt in: allow_pickle=True, pytest --mps-allow-pickle, or "
                "pytest-mps check --allow-pickle"
            )


def _read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes (a FIFO or device is never opened for a blocking read; a file over
    ``limit`` is refused unread)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise PipelineLoadError(f"{path}: not a regular file; a pipeline folder holds only files and folders")
    if info.st_size > limit:
        raise PipelineLoadError(f"{path}: {info.st_size} bytes, too large for this kind of file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        return os.read(fd, limit + 1)[:limit]
    finally:
        os.close(fd)


def _corrupt_weights(path: Path, problem: str) -> PipelineLoadError:
    return PipelineLoadError(
        f"{path}: a safetensors file is corrupt or truncated ({problem}); re-save or re-download the pipeline"
    )


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file (``{name: {"dtype", "shape", "data_offsets"}}``), read from its
    header only; the file's size must cover the data the header declares."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _corrupt_weights(path, "not a regular file")
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise _corrupt_weights(path, f"{len(head)} bytes, shorter than a header")
            size = int.from_bytes(head, "little")
            if size > min(_MAX_HEADER, info.st_size - 8):
                raise _corrupt_weights(path, f"header length {size} exceeds the file")
            header = json.loads(handle.read(size).decode("utf-8"))
    except PipelineLoadError:
        raise
    except OSError as exc:
        raise PipelineLoadError(f"{path}: cannot be read ({type(exc).__name__}: {exc.strerror})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt_weights(path, f"unreadable header: {one_line(str(exc), 120)}") from None
    if not isinstance(header, dict):
        raise _corrupt_weights(path, "the header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = 0
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise _corrupt_weights(path, f"tensor {name!r} has an invalid entry")
        end = max(end, offsets[1])
    if 8 + size + end > info.st_size:
        raise _corrupt_weights(
            path, f"the header declares {8 + size + end} bytes, the file has {info.st_size}: truncated"
        )
    return tensors


# --- deep: what Diffusers would do at load time, without loading -----------------------------------


def _json_file(path: Path) -> Any:
    try:
        text = _read_regular(path, _MAX_JSON).decode("utf-8")
        return json.loads(text)
    except OSError as exc:
        raise PipelineLoadError(f"{path}: cannot be read ({type(exc).__name__}: {exc.strerror})") from None
    except UnicodeDecodeError:
        raise PipelineLoadError(f"{path}: not UTF-8 text, so no JSON config; re-save the pipeline") from None
    except ValueError as exc:
        raise PipelineLoadError(f"{path}: not valid JSON ({exc}); fix it or re-save the pipeline") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Diffusers' and Transformers' warnings (missing torchvision, config notes) stay out of a
    validation's output, which is one line. The libraries are imported first: importing them resets
    their loggers' levels."""
    import importlib
    import importlib.util
    import logging

    for name in _LIBRARIES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
    loggers = [logging.getLogger(name) for name in _LIBRARIES]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _resolve(library: str, name: str) -> tuple[Any, str] | None:
    """The class ``name`` of ``library`` (diffusers, transformers or a diffusers pipeline module), or
    None when the library is not one whose components are inspected. Raises KeyError for an unknown
    class of a known library."""
    import importlib

    import diffusers

    if library in _LIBRARIES:
        module: Any = importlib.import_module(library)
        version = getattr(module, "__version__", "?")
    elif hasattr(diffusers.pipelines, library):
        module, version = getattr(diffusers.pipelines, library), diffusers.__version__
        library = f"diffusers.pipelines.{library}"
    else:
        return None
    cls = getattr(module, name, None)
    if not inspect.isclass(cls):
        raise KeyError(f"{library} {version}")
    return cls, library


def check_structure(path: Path) -> None:
    """The deep part of :func:`check_folder`: parse ``model_index.json`` and every component's JSON,
    resolve every class, build every model on the ``meta`` device and compare its shapes with the
    weights. Raises :class:`PipelineLoadError` naming the file."""
    index_path = path / "model_index.json"
    index = _json_file(index_path)  # before importing Diffusers: a broken index is told at once
    if not isinstance(index, dict):
        kind = type(index).__name__
        raise PipelineLoadError(f"{index_path}: a JSON {kind}, not an object; re-save the pipeline")
    for name in index:
        if not name.startswith("_") and (path / name).is_dir():
            for config in sorted((path / name).glob("*.json")):
                _json_file(config)
    with _quiet():  # importing Transformers' classes logs warnings (missing torchvision...)
        _check_index(path, index_path, index)


def _check_index(path: Path, index_path: Path, index: dict[str, Any]) -> None:
    import diffusers

    pipeline_name = index.get("_class_name")
    pipeline_cls = None
    if isinstance(pipeline_name, str):
        pipeline_cls = getattr(diffusers, pipeline_name, None)
        if not inspect.isclass(pipeline_cls):
            raise PipelineLoadError(
                f"{index_path}: unknown pipeline class {pipeline_name!r} (not in diffusers "
                f"{diffusers.__version__}); upgrade Diffusers or fix _class_name"
            )
    elif not isinstance(pipeline_name, list):  # a list names a custom pipeline's module and class
        raise PipelineLoadError(f"{index_path}: no pipeline class (_class_name); re-save the pipeline")
    declared = {k: v for k, v in index.items() if not k.startswith("_")}
    modules = _component_names(index_path, pipeline_cls, declared) if pipeline_cls is not None else None
    for name, spec in declared.items():
        pair = isinstance(spec, list) and len(spec) == 2 and all(isinstance(s, str | None) for s in spec)
        if modules is not None and name not in modules:
            continue  # a plain argument of the pipeline (requires_safety_checker, id2label...)
        if not pair:
            if modules is None:
                continue
            raise PipelineLoadError(
                f"{index_path}: component {name!r} is {one_line(json.dumps(spec), 80)}, not "
                "[library, class]; re-save the pipeline"
            )
        library, class_name = spec
        if library is None or class_name is None:
            continue
        _check_component(path, index_path, name, library, class_name)


def _component_names(index_path: Path, pipeline_cls: Any, declared: dict[str, Any]) -> set[str]:
    """The components ``pipeline_cls`` loads (its ``__init__`` arguments without a default, and its
    optional components), as Diffusers counts them; raises when a required one is not declared."""
    try:
        parameters = inspect.signature(pipeline_cls.__init__).parameters
    except (TypeError, ValueError):
        return set(declared)
    optional = set(getattr(pipeline_cls, "_optional_components", ()) or ())
    required = {
        name
        for name, p in parameters.items()
        if name != "self"
        and p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    missing = sorted(required - optional - set(declared))
    if missing:
        raise PipelineLoadError(
            f"{index_path}: {pipeline_cls.__name__} needs component(s) {', '.join(missing)}, which "
            "model_index.json does not declare; re-save the pipeline"
        )
    return required | optional


def _check_component(path: Path, index_path: Path, name: str, library: str, class_name: str) -> None:
    folder = path / name
    if not folder.is_dir():
        raise PipelineLoadError(
            f"{folder}: missing; model_index.json declares component {name!r} as "
            f"[{library!r}, {class_name!r}]; re-save the pipeline"
        )
    configs = {p.name: _json_file(p) for p in sorted(folder.glob("*.json"))}
    try:
        resolved = _resolve(library, class_name)
    except KeyError as exc:
        raise PipelineLoadError(
            f"{index_path}: component {name!r}: unknown class {class_name!r} (not in {exc.args[0]}); "
            "upgrade the library or fix model_index.json"
        ) from None
    if resolved is None:
        return
    cls = resolved[0]
    import diffusers

    if issubclass(cls, diffusers.SchedulerMixin):
        _check_scheduler(folder, cls, configs)
    elif issubclass(cls, diffusers.ModelMixin) or _is_transformers_model(cls):
        _check_model(folder, cls, configs)


def _is_transformers_model(cls: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return issubclass(cls, PreTrainedModel)


def _check_scheduler(folder: Path, cls: Any, configs: dict[str, Any]) -> None:
    config_name = getattr(cls, "config_name", "scheduler_config.json")
    config = configs.get(config_name)
    if not isinstance(config, dict):
        missing = "missing" if config is None else "not a JSON object"
        raise PipelineLoadError(f"{folder / config_name}: {missing}; re-save the pipeline")
    try:
        cls.from_config(config)
    except Exception as exc:
        raise PipelineLoadError(
            f"{folder / config_name}: does not build a {cls.__name__} "
            f"({type(exc).__name__}: {one_line(str(exc), 300)}); fix the config"
        ) from None


def _meta_model(folder: Path, cls: Any, configs: dict[str, Any]) -> tuple[Any, str] | None:
    """``cls`` built from its config on the meta device and the config file's name; None when the
    config is quantized or the model cannot be built on meta (then the load itself is the judge)."""
    import torch

    config_name = getattr(cls, "config_name", None) or "config.json"
    config = configs.get(config_name)
    if not isinstance(config, dict):
        missing = "missing" if config is None else "not a JSON object"
        raise PipelineLoadError(f"{folder / config_name}: {missing}; re-save the pipeline")
    if "quantization_config" in config:
        return None
    try:
        with torch.device("meta"):
            if _is_transformers_model(cls):
                model = cls(cls.config_class.from_pretrained(str(folder)))
            else:
                model = cls.from_config(config)
    except (NotImplementedError, RuntimeError, ImportError, OSError, AttributeError):
        return None  # meta tensors (or an optional dependency) unsupported by this model's __init__
    except Exception as exc:  # the config itself is refused, as it would be at load time
        raise PipelineLoadError(
            f"{folder / config_name}: does not build a {cls.__name__} "
            f"({type(exc).__name__}: {one_line(str(exc), 300)}); fix the config"
        ) from None
    return model, config_name


def _check_model(folder: Path, cls: Any, configs: dict[str, Any]) -> None:
    built = _meta_model(folder, cls, configs)
    if built is None:
        return
    model, config_name = built
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    for weights in sorted(folder.glob("*.safetensors")):
        tensors = _safetensors_header(weights)
        mismatched = [
            (name, entry["shape"], expected[name])
            for name, entry in sorted(tensors.items())
            if name in expected and entry.get("dtype") in _FLOAT_DTYPES and entry["shape"] != expected[name]
        ]
        if mismatched:
            name, found, built_shape = mismatched[0]
            more = f" (and {len(mismatched) - 1} more tensors)" if len(mismatched) > 1 else ""
            raise PipelineLoadError(
                f"{weights}: tensor {name} has shape {found}, but {folder.name}/{config_name} builds "
                f"{built_shape}{more}; the weights do not belong to this config: re-save the pipeline"
            )
