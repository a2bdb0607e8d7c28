"""Fingerprints of what decides a pipeline's output: its weights, configs and scheduler, and the
inputs of a call. They key the CPU references, in memory and on disk."""

from __future__ import annotations

import hashlib
import json
import uuid
import weakref
from typing import Any

__all__ = [
    "BOOKKEEPING_CONFIG_KEYS",
    "canonical_config",
    "inputs_fingerprint",
    "named_modules",
    "pipeline_fingerprint",
    "session_fingerprint",
    "start_weights_digest",
    "tensor_state",
    "weights_digest",
]

# module -> (state version, digest): hashing the weights of a real model costs a second, once.
_DIGESTS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()
# module -> the hash start_weights_digest began for it: (state version, digest), or None if it failed.
_PENDING: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def named_modules(root: Any) -> list[tuple[str, Any]]:
    """``list(root.named_modules())``: the same names in the same order (pre-order, each module once),
    built without its generator recursion, which costs more than everything else in a key read
    before every run."""
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        prefix, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        out.append((prefix, module))
        children = [
            (f"{prefix}.{name}" if prefix else name, child)
            for name, child in module._modules.items()
            if child is not None
        ]
        stack.extend(reversed(children))
    return out


def _named_members(walked: list[tuple[str, Any]], store: str) -> list[tuple[str, Any]]:
    """``named_parameters()`` (``store="_parameters"``) or ``named_buffers()`` (``"_buffers"``) of the
    module ``walked`` came from (:func:`named_modules`): each tensor once, under its first name."""
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for prefix, module in walked:
        for key, tensor in getattr(module, store).items():
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            out.append((f"{prefix}.{key}" if prefix else key, tensor))
    return out


def tensor_state(
    module: Any, *, device: bool = False, walked: list[tuple[str, Any]] | None = None
) -> tuple[Any, ...]:
    """A cheap fingerprint of a module's tensors that changes when they are converted or edited.

    Parameters keep their version counter across device moves (torch bumps it on every in-place
    change), so it is part of the fingerprint. Buffers are replaced by new tensors on every move,
    which restarts their counter: their (small) contents are hashed instead. ``walked``: the
    module's :func:`named_modules`, when the caller has it.
    """
    from pytest_mps.devices import plain_cpu

    walked = named_modules(module) if walked is None else walked
    state: list[Any] = []
    for name, t in _named_members(walked, "_parameters"):
        state.append((name, str(t.dtype), tuple(t.shape), t._version, str(t.device) if device else ""))
    for name, t in _named_members(walked, "_buffers"):
        entry: tuple[Any, ...] = (name, str(t.dtype), tuple(t.shape), str(t.device) if device else "")
        if t.numel() <= 1 << 20:
            data = plain_cpu(t.detach().to("cpu")).contiguous()
            raw = data.view(-1).view(__import__("torch").uint8).numpy().tobytes() if data.numel() else b""
            entry += (hashlib.blake2b(raw, digest_size=8).hexdigest(),)
        state.append(entry)
    return tuple(state)


#: Bytes of copied tensors waiting for a hashing thread at most (a device's weights are copied to the
#: CPU one tensor at a time, in the calling thread: MPS is not safe to use from several threads).
_IN_FLIGHT_BYTES = 1 << 29


def _tensor_digest(name: str, data: Any) -> bytes:
    """One tensor's digest (``data`` on the CPU, contiguous); blake2b releases the GIL while it hashes,
    so several run at once in threads."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
    if data.numel():
        h.update(data.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, not a copy
    return h.digest()


def _digest_of(tensors: list[tuple[str, Any]]) -> str:
    """The digest of ``tensors`` (name, tensor) in order: each tensor hashed on its own, in a thread
    pool, and their digests hashed in order. A tensor off the CPU is copied to it here, in the calling
    thread, with at most ``_IN_FLIGHT_BYTES`` waiting for a hashing thread."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pytest_mps.devices import plain_cpu

    budget = threading.BoundedSemaphore(max(1, _IN_FLIGHT_BYTES >> 20))
    workers = max(1, min(8, os.cpu_count() or 1))

    def job(name: str, data: Any, units: int) -> bytes:
        try:
            return _tensor_digest(name, data.contiguous())
        finally:
            for _ in range(units):
                budget.release()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pytest-mps-digest") as pool:
        futures = []
        for name, tensor in tensors:
            data = plain_cpu(tensor.detach().to("cpu"))
            units = min(max(1, _IN_FLIGHT_BYTES >> 20), max(1, (data.numel() * data.element_size()) >> 20))
            for _ in range(units):
                budget.acquire()
            futures.append(pool.submit(job, name, data, units))
        h = hashlib.blake2b(b"per-tensor-1", digest_size=16)
        for future in futures:
            h.update(future.result())
    return h.hexdigest()


def _named_tensors(module: Any, walked: list[tuple[str, Any]] | None = None) -> list[tuple[str, Any]]:
    """``module``'s named parameters, then its named buffers (:func:`named_modules`' walk)."""
    walked = named_modules(module) if walked is None else walked
    return _named_members(walked, "_parameters") + _named_members(walked, "_buffers")


def _module_digest(module: Any) -> str:
    """A content hash of ``module``'s parameters and buffers (by name, dtype, shape and bytes), cached
    until they change (a hash :func:`start_weights_digest` began is waited for and used when the
    tensors have not changed since)."""
    walked = named_modules(module)
    version = tensor_state(module, walked=walked)
    pending = _PENDING.pop(module, None)
    if pending is not None:
        begun = pending.result()
        if begun is not None:
            _DIGESTS[module] = begun
    cached = _DIGESTS.get(module)
    if cached is not None and cached[0] == version:
        return cached[1]
    digest = _digest_of(_named_tensors(module, walked))
    _DIGESTS[module] = (version, digest)
    return digest


def start_weights_digest(pipe: Any) -> None:
    """Begin hashing the weights of ``pipe``'s modules that are on the CPU now, in a background thread,
    from their current storage: called just before a pipeline loaded on the CPU moves to its device,
    the hash reads the CPU tensors (nothing is copied back from the device) while the move runs.
    :func:`weights_digest` waits for it and uses it if the weights did not change in between."""
    import threading
    from concurrent.futures import Future

    import torch

    jobs: list[tuple[Any, tuple[Any, ...], list[tuple[str, Any]], Future[Any]]] = []
    for _, component in sorted(getattr(pipe, "components", {}).items()):
        if not isinstance(component, torch.nn.Module) or component in _PENDING:
            continue
        walked = named_modules(component)
        tensors = [(name, t.detach()) for name, t in _named_tensors(component, walked)]  # aliases
        if any(t.device.type != "cpu" for _, t in tensors):
            continue
        future: Future[Any] = Future()
        _PENDING[component] = future
        jobs.append((component, tensor_state(component, walked=walked), tensors, future))

    def run() -> None:
        for _, version, tensors, future in jobs:
            try:
                future.set_result((version, _digest_of(tensors)))
            except BaseException:  # the digest is then computed when it is needed
                future.set_result(None)

    if jobs:
        threading.Thread(target=run, name="pytest-mps-weights-digest", daemon=True).start()


def weights_digest(pipe: Any) -> str:
    """A content hash of every module's weights (recomputed only when they change)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, component in sorted(getattr(pipe, "components", {}).items()):
        if isinstance(component, torch.nn.Module):
            h.update(f"{name}={_module_digest(component)};".encode())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Generator):
        state = value.get_state().numpy().tobytes()
        return {"generator": value.device.type, "state": hashlib.blake2b(state, digest_size=16).hexdigest()}
    if isinstance(value, torch.Tensor):
        from pytest_mps.devices import plain_cpu

        data = plain_cpu(value.detach().to("cpu")).contiguous()
        return {
            "tensor": str(data.dtype),
            "shape": list(data.shape),
            "sha": hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest(),
        }
    if type(value).__module__.startswith("PIL."):
        return {
            "image": value.mode,
            "size": list(value.size),
            "sha": hashlib.blake2b(value.tobytes(), digest_size=16).hexdigest(),
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):  # iteration order follows string hashes: differs per process
        items = [_jsonable(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=repr))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def inputs_fingerprint(inputs: dict[str, Any]) -> str:
    """A stable hash of call arguments (generator states, prompts, images, sizes...)."""
    text = json.dumps(_jsonable(inputs), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


#: Config entries that record where and by what a component was saved or loaded, not how it computes:
#: the loading path (differs per checkout or machine), the saving library's version (the running
#: versions are part of a stored reference's key), the class name (recorded separately), and
#: ``_use_default_values``, a list of the keys that took defaults, built from a set (its order differs
#: between processes) and redundant with the values themselves. Other private keys stay in the key:
#: leaving out one that changes the output would share a reference between different pipelines.
BOOKKEEPING_CONFIG_KEYS = frozenset(
    (
        "_class_name",
        "_diffusers_version",
        "_name_or_path",
        "_use_default_values",
        "_ignore_files",
        "_commit_hash",
        "transformers_version",
        "_attn_implementation_autoset",
    )
)


def canonical_config(config: Any) -> Any:
    """A component's config as canonical JSON-ready data: bookkeeping entries
    (:data:`BOOKKEEPING_CONFIG_KEYS`) left out, mappings sorted by key, sets sorted; the same in every
    process for the same pipeline, wherever it was loaded from."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, dict):
        return repr(config)
    return _jsonable({k: v for k, v in dict(config).items() if str(k) not in BOOKKEEPING_CONFIG_KEYS})


def _config_dict(component: Any) -> Any:
    config = getattr(component, "config", None)
    if config is None:
        return None
    out = canonical_config(config)
    # Transformers keeps the attention implementation (eager, sdpa...) out of ``to_dict``; it changes
    # the output's rounding, so it is part of the key.
    attention = getattr(config, "_attn_implementation", None)
    if isinstance(out, dict) and isinstance(attention, str):
        out["_attn_implementation"] = attention
    return out


def behaviour_state(module: Any, *, walked: list[tuple[str, Any]] | None = None) -> list[Any]:
    """What changes a module's output besides its weights: forward hooks and pre-hooks, attention
    processors, and ``forward`` methods replaced on the instance. Hooks and replaced methods are named
    by object identity, so a reference computed with a hook is never reused without it (nor across
    sessions, where identities differ). ``walked``: the module's :func:`named_modules`, when the caller
    has it."""
    state: list[Any] = []
    for path, sub in named_modules(module) if walked is None else walked:
        entry: list[Any] = []
        for kind in ("_forward_hooks", "_forward_pre_hooks"):
            hooks = getattr(sub, kind, None)
            if hooks:
                entry.append((kind, [id(h) for h in hooks.values()]))
        processor = sub.__dict__.get("processor")
        if processor is not None:
            entry.append(("processor", type(processor).__qualname__, getattr(processor, "slice_size", None)))
        if "forward" in sub.__dict__:
            entry.append(("forward", id(sub.__dict__["forward"])))
        if entry:
            state.append((path, entry))
    return state


def pipeline_description(pipe: Any) -> dict[str, Any]:
    """Class, component classes and configs, dtype, a weights digest, and the modules' behaviour
    (hooks, attention processors): what decides the output."""
    import torch

    components = {}
    for name, component in sorted(getattr(pipe, "components", {}).items()):
        if component is None:
            continue
        entry: dict[str, Any] = {"class": type(component).__name__}
        if isinstance(component, torch.nn.Module) or name == "scheduler":
            entry["config"] = _config_dict(component)
        if isinstance(component, torch.nn.Module):
            first = next(component.parameters(), None)
            entry["dtype"] = str(first.dtype) if first is not None else None
            entry["behaviour"] = behaviour_state(component)
        components[name] = entry
    return {"class": type(pipe).__name__, "components": components, "weights": weights_digest(pipe)}


_TOKENS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _token(module: Any) -> str:
    token = _TOKENS.get(module)
    if token is None:
        token = _TOKENS[module] = uuid.uuid4().hex
    return token


def session_fingerprint(pipe: Any, *, walks: dict[str, list[tuple[str, Any]]] | None = None) -> str:
    """A key that is valid within this process only: each module's identity (a token that is never
    reused), its tensor state (conversions, in-place edits) and behaviour (hooks, processors), and the
    scheduler's class and config. It reads no weights, so it costs microseconds where
    :func:`pipeline_fingerprint` hashes every weight (seconds on a real model); it serves when no
    reference is stored on disk. ``walks``: each module component's :func:`named_modules` by
    component name, when the caller has them."""
    import torch

    parts: list[Any] = [type(pipe).__name__]
    for name, component in sorted(getattr(pipe, "components", {}).items()):
        if isinstance(component, torch.nn.Module):
            walked = walks.get(name) if walks is not None else None
            walked = named_modules(component) if walked is None else walked
            parts.append(
                (
                    name,
                    _token(component),
                    tensor_state(component, walked=walked),
                    behaviour_state(component, walked=walked),
                )
            )
        elif name == "scheduler" and component is not None:
            parts.append((name, type(component).__name__, _config_dict(component)))
        else:
            parts.append((name, type(component).__name__))
    text = json.dumps(parts, sort_keys=True, default=repr)
    return "session:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def pipeline_fingerprint(pipe: Any) -> str:
    """A stable hash of :func:`pipeline_description`."""
    text = json.dumps(pipeline_description(pipe), sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
