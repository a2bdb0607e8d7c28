"""Loading pipelines safely, and sharing one load per session without sharing state between tests.

Safety: weights load from safetensors only. A folder whose weights exist only as pickled ``.bin``
files is refused unless the caller opts in, since unpickling runs arbitrary code. The folder checks
(:func:`check_folder`, :func:`check_structure`) live in :mod:`pytest_mps.pipeline_folder`; a load that
fails raises :class:`PipelineLoadError` with one line that names the file at fault where they find it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_mps.pipeline_folder import (
    PipelineLoadError,
    _check_basics,
    check_folder,
    check_structure,
    one_line,
)

__all__ = [
    "PipelineCache",
    "PipelineLoadError",
    "check_folder",
    "check_structure",
    "load_pipeline",
    "prepare_pipeline",
]

# The folder checks live in pipeline_folder; ``_check_folder`` is the name the suite's plugin imports.
_check_folder = _check_basics


def _describe_load_error(source: str, exc: BaseException) -> str:
    """One line with the whole cause (Diffusers' shape mismatches name the tensor and both shapes on
    their second line)."""
    text = one_line(str(exc)) or type(exc).__name__
    lowered = text.lower()
    if "safetensor" in lowered or "header" in lowered or "deserializ" in lowered:
        return (
            f"{source}: a safetensors file is corrupt or truncated ({type(exc).__name__}: {text}); "
            "re-save or re-download the pipeline"
        )
    if "keep_in_fp32_modules" in text or "accelerate" in lowered:
        return (
            f"{source}: this pipeline keeps modules in float32 and Diffusers needs accelerate to load it "
            f"({type(exc).__name__}: {text}); pip install accelerate"
        )
    return f"{source}: could not load the pipeline ({type(exc).__name__}: {text})"


def _diagnose(path: Path, exc: BaseException) -> None:
    """After a failed load: raise the precise one-line error of :func:`check_structure` (the file, the
    tensor and both shapes...) when it finds what is wrong with the folder."""
    try:
        check_structure(path)
    except PipelineLoadError as precise:
        raise precise from exc
    except Exception:  # the diagnosis must never hide the load's own error
        return


def load_pipeline(source: Any, **kwargs: Any) -> Any:
    """Load ``source`` into a Diffusers pipeline on the CPU, without progress bars.

    Args:
        source: a local pipeline folder, a hub id already in the local cache, a ``DiffusionPipeline``,
            or a zero-argument callable returning one.
        pipeline_cls: the class to load with (default: ``DiffusionPipeline``, which reads
            ``model_index.json``).
        torch_dtype: dtype to load the weights in.
        allow_download: let a hub id download (tests never download unless this is set).
        allow_pickle: accept pickled ``.bin`` weights (unpickling can run code).
        **kwargs: passed on to ``from_pretrained``.

    Raises:
        PipelineLoadError: one line naming the cause and a fix.
    """
    import contextlib

    import diffusers  # noqa: F401 - imported before it is quieted

    from pytest_mps.quiet import quiet_libraries

    with contextlib.suppress(ImportError):
        import transformers  # noqa: F401 - it logs while loading text encoders

    with quiet_libraries():
        return _load(source, **kwargs)


def _load(
    source: Any,
    *,
    pipeline_cls: Any = None,
    torch_dtype: Any = None,
    allow_download: bool = False,
    allow_pickle: bool = False,
    **from_pretrained_kwargs: Any,
) -> Any:
    import diffusers

    if isinstance(source, diffusers.DiffusionPipeline):
        return source
    if callable(source) and not isinstance(source, str | os.PathLike):
        pipe = source()
        if not isinstance(pipe, diffusers.DiffusionPipeline):
            raise PipelineLoadError(
                f"the pipeline factory {getattr(source, '__name__', source)!r} returned "
                f"{type(pipe).__name__}, not a DiffusionPipeline"
            )
        return pipe
    cls = pipeline_cls or diffusers.DiffusionPipeline
    kwargs = dict(from_pretrained_kwargs)
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    text = os.fspath(source)
    path = Path(text).expanduser()
    is_hub_id = (
        not path.exists()
        and text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and not text.endswith("/")
    )
    if not is_hub_id:
        _check_folder(path, allow_pickle=allow_pickle)
        kwargs.setdefault("use_safetensors", not allow_pickle)
        try:
            return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
        except Exception as exc:
            _diagnose(path, exc)
            raise PipelineLoadError(_describe_load_error(str(path), exc)) from exc
    kwargs.setdefault("use_safetensors", not allow_pickle)
    try:
        return cls.from_pretrained(str(source), local_files_only=not allow_download, **kwargs)
    except Exception as exc:
        if not allow_download:
            raise PipelineLoadError(
                f"{source!r} is neither a folder nor a hub id in the local cache ({type(exc).__name__}); "
                "tests never download: fetch it once outside the tests, or pass allow_download=True"
            ) from exc
        raise PipelineLoadError(_describe_load_error(str(source), exc)) from exc


def prepare_pipeline(pipe: Any) -> Any:
    """Eval mode for every module (dropout and label dropping draw from the device RNG otherwise), and
    no progress bars."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


# --- per-test isolation ---------------------------------------------------------------------------

_MODULE_SLOTS_NOT_RESTORED = ("_parameters", "_buffers")


def _module_state(pipe: Any) -> list[tuple[Any, dict[str, Any]]]:
    """A shallow copy of every submodule's attributes (processors, slicing/tiling flags, hooks,
    children), one level of dicts and lists deep."""
    import torch

    state = []
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for module in component.modules():
                attrs = {
                    k: (copy.copy(v) if isinstance(v, dict | list) else v)
                    for k, v in vars(module).items()
                    if k not in _MODULE_SLOTS_NOT_RESTORED
                }
                state.append((module, attrs))
    return state


def _restore_module_state(state: list[tuple[Any, dict[str, Any]]]) -> None:
    for module, attrs in state:
        for key in [k for k in vars(module) if k not in attrs and k not in _MODULE_SLOTS_NOT_RESTORED]:
            delattr(module, key)
        for key, value in attrs.items():
            setattr(module, key, copy.copy(value) if isinstance(value, dict | list) else value)


def weights_state(pipe: Any) -> tuple[Any, ...]:
    """A fingerprint of every component's tensors (dtype, device, shape, edits): changes when a test
    converts, moves or edits the weights in place (see :func:`pytest_mps.keys.tensor_state`)."""
    import torch

    from pytest_mps.keys import tensor_state

    return tuple(
        (name, tensor_state(component, device=True))
        for name, component in sorted(pipe.components.items())
        if isinstance(component, torch.nn.Module)
    )


@dataclass
class _Entry:
    pipe: Any
    module_state: list[tuple[Any, dict[str, Any]]]
    pipe_state: dict[str, Any]
    scheduler_config: Any
    scheduler_cls: Any
    weights: tuple[Any, ...]


@dataclass
class PipelineCache:
    """Session-wide cache of loaded pipelines, keyed by their loading arguments.

    :meth:`checkout` hands a test the cached pipeline restored to its state at load time (module
    attributes, attention processors, a fresh scheduler, pipeline attributes); :meth:`checkin`
    drops the entry when the test changed its weights (dtype, device, in-place edits), so the next
    test loads again rather than inherit them.
    """

    entries: dict[Any, _Entry] = field(default_factory=dict)
    loads: int = 0
    evictions: int = 0

    def checkout(self, key: Any, load: Callable[[], Any]) -> Any:
        """The pipeline for ``key``, loading it on first use."""
        entry = self.entries.get(key)
        if entry is None:
            pipe = load()
            self.loads += 1
            entry = _Entry(
                pipe=pipe,
                module_state=_module_state(pipe),
                pipe_state={
                    k: (copy.copy(v) if isinstance(v, dict | list) else v) for k, v in vars(pipe).items()
                },
                scheduler_config=copy.deepcopy(dict(pipe.scheduler.config))
                if hasattr(pipe, "scheduler")
                else None,
                scheduler_cls=type(pipe.scheduler) if hasattr(pipe, "scheduler") else None,
                weights=weights_state(pipe),
            )
            self.entries[key] = entry
            return pipe
        pipe = entry.pipe
        _restore_module_state(entry.module_state)
        for k in [k for k in vars(pipe) if k not in entry.pipe_state]:
            delattr(pipe, k)
        for k, v in entry.pipe_state.items():
            object.__setattr__(pipe, k, copy.copy(v) if isinstance(v, dict | list) else v)
        if entry.scheduler_cls is not None:
            pipe.scheduler = entry.scheduler_cls.from_config(entry.scheduler_config)
        return pipe

    def checkin(self, key: Any) -> bool:
        """After a test: keep the entry if its weights are as loaded; drop it otherwise. Returns
        whether it was kept."""
        entry = self.entries.get(key)
        if entry is None:
            return False
        if weights_state(entry.pipe) != entry.weights:
            del self.entries[key]
            self.evictions += 1
            return False
        return True

    def clear(self) -> None:
        """Forget every pipeline."""
        self.entries.clear()
