"""The in-process keys of a target run (:mod:`pytest_mps.run_cache`): the pipeline's state, where the run
happens, and the call's inputs. Each is valid within this process only (module identities, version
counters); the stable fingerprints of stored references are :mod:`pytest_mps.keys`'.

The pipeline's state is :func:`pytest_mps.keys.session_fingerprint` plus what that fingerprint does not
see: every module's plain attributes (``use_slicing``, FreeU's factors, ``training``...), the identity of
each module class's ``forward`` and each processor class's ``__call__`` (a patched class), and a sample of
every parameter's values (an edit through ``.data``, which leaves the version counter alone). It is read
before every target call, so it walks the modules once and reads the weights without
``__torch_function__`` handling.

Importing this module is cheap (no torch).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_mps.target import Target

__all__ = ["SAMPLES_PER_TENSOR", "inputs_key", "pipeline_state", "where_key"]

#: Values sampled from each parameter for :func:`pipeline_state` (evenly spaced over the tensor).
SAMPLES_PER_TENSOR = 16


def _modules(pipe: Any) -> list[tuple[str, Any]]:
    import torch

    return [
        (name, c)
        for name, c in sorted(getattr(pipe, "components", {}).items())
        if isinstance(c, torch.nn.Module)
    ]


_SCALARS = (bool, int, float, str, type(None))
_internals: frozenset[str] | None = None


def _module_internals() -> frozenset[str]:
    """The bookkeeping every ``nn.Module`` keeps in its ``__dict__`` (hook tables, flags), except
    ``training``, which changes the output."""
    global _internals
    if _internals is None:
        import torch

        _internals = frozenset(torch.nn.Module().__dict__) - {"training"}
    return _internals


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    return kind in (tuple, list) and len(value) <= 16 and all(type(v) in _SCALARS for v in value)


def _resolved(cls: type, name: str) -> Any:
    """The function ``cls.name`` resolves to (through its bases)."""
    return next((k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), None)


def _no_torch_function() -> Any:
    """A context in which torch ops skip ``__torch_function__`` handling (the emulated device's mode
    among it): the key's own reads of plain CPU tensors need none of it."""
    import contextlib

    import torch

    disable = getattr(torch._C, "DisableTorchFunction", None)
    return disable() if disable is not None else contextlib.nullcontext()


def _extras(modules: list[tuple[str, Any]], walks: dict[str, list[tuple[str, Any]]]) -> tuple[list[Any], str]:
    """What :func:`pytest_mps.keys.session_fingerprint` does not see, in one walk over the modules:

    - every module's plain attributes (numbers, strings, flags such as ``use_slicing`` or FreeU's
      factors) and the identity of the code that runs (the ``forward`` of each module class and the
      ``__call__`` of each processor class: a patched class);
    - a digest of :data:`SAMPLES_PER_TENSOR` values of every parameter, read with one transfer per
      dtype: it changes when weights are edited through ``.data`` (which leaves the version counter
      alone); "unreadable" for weights that cannot be read (meta tensors, offloaded modules).
    """
    import torch

    from pytest_mps.devices import plain_cpu

    internals = _module_internals()
    attributes: list[Any] = []
    classes: dict[type, int] = {}
    groups: dict[Any, list[Any]] = {}
    plain_types = (torch.Tensor, torch.nn.Parameter)
    readable = True
    with torch.no_grad():
        for name, _ in modules:
            for index, (_, sub) in enumerate(walks[name]):
                plain = [(k, v) for k, v in sub.__dict__.items() if k not in internals and _plain(v)]
                if plain:
                    attributes.append((name, index, plain))
                kind = type(sub)
                if kind not in classes:
                    classes[kind] = id(_resolved(kind, "forward"))
                processor = sub.__dict__.get("processor")
                if processor is not None and type(processor) not in classes:
                    classes[type(processor)] = id(_resolved(type(processor), "__call__"))
                if not readable:
                    continue
                for parameter in sub._parameters.values():
                    if parameter is None:
                        continue
                    try:
                        tensor = plain_cpu(parameter)
                        if type(tensor) not in plain_types:
                            tensor = plain_cpu(parameter.detach())
                        count = tensor.numel()
                        if count:
                            flat = tensor.detach().reshape(-1)
                            step = max(1, count // SAMPLES_PER_TENSOR)
                            groups.setdefault(flat.dtype, []).append(flat[: step * SAMPLES_PER_TENSOR : step])
                    except (RuntimeError, NotImplementedError, TypeError):
                        readable = False
                        break
        attributes.append(sorted((f"{c.__module__}.{c.__qualname__}", i) for c, i in classes.items()))
        if not readable:
            return attributes, "unreadable"
        h = hashlib.blake2b(digest_size=16)
        try:
            for dtype, views in sorted(groups.items(), key=lambda item: str(item[0])):
                data = plain_cpu(torch.cat(views).to("cpu")).contiguous()
                h.update(str(dtype).encode())
                h.update(data.view(torch.uint8).numpy().tobytes())
        except (RuntimeError, NotImplementedError, TypeError):  # meta or offloaded weights
            return attributes, "unreadable"
    return attributes, h.hexdigest()


def pipeline_state(pipe: Any) -> str:
    """A key for the pipeline's state within this process (see the module docstring): changes when its
    weights, dtype, hooks, processors, attributes, module code or scheduler change."""
    from pytest_mps.keys import named_modules, session_fingerprint

    with _no_torch_function():
        modules = _modules(pipe)
        walks = {name: named_modules(component) for name, component in modules}  # one walk each
        attributes, sample = _extras(modules, walks)
        session = session_fingerprint(pipe, walks=walks)
    text = json.dumps([session, attributes, sample], default=repr)
    return "state:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _settings() -> tuple[Any, ...]:
    """Process-wide settings that change a run's arithmetic."""
    import torch

    cuda = torch.backends.cuda
    return (
        str(torch.get_default_dtype()),
        torch.get_num_threads(),
        torch.get_float32_matmul_precision(),
        torch.are_deterministic_algorithms_enabled(),
        bool(cuda.matmul.allow_tf32),
        bool(torch.backends.cudnn.allow_tf32),
        bool(torch.backends.cudnn.deterministic),
        bool(torch.backends.cudnn.benchmark),
        bool(cuda.matmul.allow_fp16_reduced_precision_reduction),
        bool(cuda.flash_sdp_enabled()),
        bool(cuda.mem_efficient_sdp_enabled()),
        bool(cuda.math_sdp_enabled()),
    )


def where_key(pipe: Any, target: Target) -> str:
    """Where a run happens: the target, the pipeline's device, the emulated device's state (and the
    MPS fallback variable it reads) and the process-wide numerics settings."""
    import os

    from pytest_mps.emulated_target import emulation_active

    return json.dumps(
        [
            target.label,
            str(getattr(pipe, "device", "")),
            emulation_active(),
            os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK", ""),
            _settings(),
        ]
    )


def inputs_key(call: dict[str, Any]) -> str | None:
    """The inputs' fingerprint, or None when the call must never be reused (a callable argument, such
    as a step callback, may keep state or have side effects)."""
    from pytest_mps.keys import inputs_fingerprint

    if any(callable(v) and not isinstance(v, type) for v in call.values()):
        return None
    return inputs_fingerprint(call)
