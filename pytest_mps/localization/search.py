"""The module search inside one call: which submodule introduces the error.

A call is examined by replaying its module on the target with the reference's inputs to it and
comparing the output with the reference's: error inherited from upstream does not count. A call that
differs (or draws random numbers) is expanded: its module runs once more on the reference side with
the same inputs and RNG state, with hooks that capture the inputs and outputs of its outermost
submodule calls (containers first: ``down_blocks.0`` before ``down_blocks.0.resnets.0``); each is
examined in turn, and the search descends into those that differ, in execution order. A call whose
submodules all agree introduced the error itself.

Memory stays bounded: only one call's submodule captures are held (up to ``capture_bytes``; beyond
it the call is rerun for the rest), and each capture is dropped once examined, unless it is to be
expanded. Cost stays bounded by ``max_expansions``, ``max_depth`` and an optional deadline.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pytest_mps.localization.records import ModuleError
from pytest_mps.localization.tensors import (
    copy_off_device,
    difference,
    nbytes,
    onto,
    tensors_in,
    with_tensors,
)

if TYPE_CHECKING:
    import torch

    from pytest_mps.localization.sides import Side

__all__ = ["Call", "Limits", "Search"]


@dataclass
class Call:
    """One call of a module, as the reference made it (tensors on the CPU)."""

    path: str  # relative to the searched root ("" for the root)
    args: Any
    kwargs: Any
    outputs: list[Any] | None
    rng: Any  # the CPU RNG state before the call
    drew: bool = False
    dtypes: list[Any] | None = None  # the target's input dtypes, where known (the root call)


@dataclass(frozen=True)
class Limits:
    """How far a search may go."""

    max_expansions: int = 24
    max_depth: int = 12
    capture_bytes: int = 1 << 30
    deadline: float | None = None  # a time.perf_counter() value


#: A module that introduces error names the divergence only if its error is at least this fraction of
#: the largest one found: near the threshold, rounding noise must not win by coming first.
NOISE_SHARE = 0.1

#: A submodule whose error is smaller than its parent's accounts for it only if giving the parent the
#: reference's output of that submodule takes away at least this share of the parent's error.
ACCOUNT_SHARE = 0.25


@dataclass
class _Found:
    culprits: list[ModuleError] = field(default_factory=list)  # in the order the search met them
    first: ModuleError | None = None  # the one that names the divergence
    chain: list[ModuleError] = field(default_factory=list)  # from the root down to ``first``
    examined: int = 0
    expansions: int = 0
    peak_bytes: int = 0  # the most bytes of submodule captures one rerun held
    notes: list[str] = field(default_factory=list)


def _join(root: str, path: str) -> str:
    return f"{root}.{path}" if root and path else root or path


def _fork_rng(side: Side) -> contextlib.AbstractContextManager[Any]:
    """Fork the CPU RNG and, on a real device, the device's (the emulation draws the CPU's numbers)."""
    import torch

    kind = side.target.name
    if kind in ("cuda", "xpu", "mps"):
        try:
            index = side.target_device.index or 0
            return torch.random.fork_rng(devices=[index], device_type=kind)
        except Exception:  # an older torch without device_type
            pass
    return torch.random.fork_rng(devices=[])


class Search:
    """A search below one top-level call (``root_path``: ``unet``, ``vae.decoder``...)."""

    def __init__(
        self,
        side: Side,
        reference_root: torch.nn.Module,
        target_root: torch.nn.Module,
        root_path: str,
        *,
        rtol: float,
        atol: float,
        limits: Limits,
    ) -> None:
        self.side = side
        self.reference_root = reference_root
        self.target_root = target_root
        self.root_path = root_path
        self.rtol, self.atol = rtol, atol
        self.limits = limits
        self.found = _Found()
        self._stack: list[ModuleError] = []
        self._gradual = False
        self._met: list[tuple[tuple[int, ...], ModuleError, list[ModuleError]]] = []

    # --- examine: replay one call on the target ------------------------------------------------------
    def examine(self, call: Call, depth: int) -> ModuleError:
        """The error ``call``'s module introduces on the target (its replay given the reference's inputs)."""

        module = self.target_root.get_submodule(call.path) if call.path else self.target_root
        path = _join(self.root_path, call.path)
        self.found.examined += 1
        note = ""
        try:
            outputs = self._replay(module, call, self.side.cast)
        except Exception as exc:
            if self.side.cast is None:
                return self._unjudged(module, path, call, depth, exc)
            try:  # a module that takes some inputs in float32 even in a float16 pipeline
                outputs = self._replay(module, call, None)
                note = f"inputs kept as captured (with float16 inputs the replay raised {type(exc).__name__})"
            except Exception as again:
                return self._unjudged(module, path, call, depth, again)
        assert call.outputs is not None
        diff = difference(outputs, call.outputs, rtol=self.rtol, atol=self.atol)
        del outputs
        return ModuleError(
            path=path,
            module_class=type(module).__name__,
            max_abs=diff.max_abs,
            relative=diff.relative,
            ratio=diff.ratio,
            shape=diff.shape,
            dtype=diff.dtype,
            nonfinite=diff.nonfinite,
            draws_random=call.drew,
            depth=depth,
            note=diff.problem or note,
        )

    def _unjudged(self, module: Any, path: str, call: Call, depth: int, exc: Exception) -> ModuleError:
        """A module whose replay raised: no figure, the exception as its note."""
        note = f"replay raised {type(exc).__name__}: {_first(exc)}"
        return ModuleError(
            path, type(module).__name__, 0.0, 0.0, 0.0, depth=depth, draws_random=call.drew, note=note
        )

    def _replay(self, module: torch.nn.Module, call: Call, cast: Any) -> list[Any]:
        import torch

        device = self.side.target_device
        args, kwargs = onto((call.args, call.kwargs), device, cast, dtypes=call.dtypes if cast else None)
        with self.side.on_target(), _fork_rng(self.side), torch.inference_mode():
            torch.set_rng_state(call.rng)
            output = module(*args, **kwargs)
            return copy_off_device(tensors_in(output))

    # --- expand: the outermost submodule calls of one call -------------------------------------------
    def calls_below(self, call: Call, start: int = 0) -> tuple[list[Call], int | None]:
        """Rerun ``call`` on the reference side, capturing its outermost submodule calls from the
        ``start``-th on, until ``capture_bytes``; also returns where to resume (None when done)."""
        import torch

        module = self.reference_root.get_submodule(call.path) if call.path else self.reference_root
        names = {sub: name for name, sub in module.named_modules() if name}
        captured: list[Call] = []
        state: dict[str, Any] = {"depth": 0, "order": 0, "bytes": 0, "resume": None, "pending": None}

        def pre(sub: Any, args: Any, kwargs: Any) -> None:
            if state["depth"] == 0:
                order = state["order"]
                state["order"] += 1
                if order >= start and state["resume"] is None:
                    if captured and state["bytes"] >= self.limits.capture_bytes:
                        state["resume"] = order
                    else:
                        rel = _join(call.path, names[sub])
                        args_copy, kwargs_copy = copy_off_device((args, kwargs))
                        state["pending"] = Call(rel, args_copy, kwargs_copy, None, torch.get_rng_state())
            state["depth"] += 1

        def post(sub: Any, args: Any, kwargs: Any, output: Any) -> None:
            state["depth"] -= 1
            pending = state["pending"]
            if state["depth"] == 0 and pending is not None:
                state["pending"] = None
                pending.outputs = copy_off_device(tensors_in(output))
                pending.drew = not torch.equal(pending.rng, torch.get_rng_state())
                state["bytes"] += nbytes((pending.args, pending.kwargs, pending.outputs))
                captured.append(pending)

        handles = []
        try:
            for sub in names:
                handles.append(sub.register_forward_pre_hook(pre, with_kwargs=True, prepend=True))
                handles.append(sub.register_forward_hook(post, with_kwargs=True))
            args, kwargs = onto((call.args, call.kwargs), self.side.reference_device)
            with self.side.reference(), _fork_rng(self.side), torch.inference_mode():
                torch.set_rng_state(call.rng)
                module(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        self.found.peak_bytes = max(self.found.peak_bytes, state["bytes"])
        return captured, state["resume"]

    # --- the search ----------------------------------------------------------------------------------
    def run(self, root: Call, *, gradual: bool = False, observed: ModuleError | None = None) -> _Found:
        """Search below ``root``. ``gradual``: no call exceeds the threshold, so follow the largest
        local error instead. ``observed``: the root call's difference as the runs saw it, when its
        inputs agreed (so the difference is its own): its replay is then skipped unless no
        submodule explains the difference.

        Submodules that differ are searched largest error first (so limits cut the weakest leads);
        the divergence is then named at the culprit that comes first in execution order among those
        with at least :data:`NOISE_SHARE` of the largest error, or that draw random numbers."""
        self._gradual = gradual
        figure = observed if observed is not None else self.examine(root, 0)
        self._replayed_root = observed is None
        if self._suspect(figure) or gradual:
            self._visit(root, figure, 0, ())
        met = [m for m in self._met if m[1].max_abs > 0 or m[1].draws_random]
        self.found.culprits = [m[1] for m in met]
        if met:
            largest = max(m[1].ratio for m in met)
            eligible = [m for m in met if m[1].draws_random or m[1].ratio >= NOISE_SHARE * largest]
            _, self.found.first, self.found.chain = min(eligible, key=lambda m: m[0])
        return self.found

    def _suspect(self, figure: ModuleError) -> bool:
        return figure.differs or figure.draws_random

    def _limit(self, depth: int) -> str:
        if depth >= self.limits.max_depth:
            return f"max_depth {self.limits.max_depth}"
        if self.found.expansions >= self.limits.max_expansions:
            return f"max_expansions {self.limits.max_expansions}"
        if self.limits.deadline is not None and time.perf_counter() > self.limits.deadline:
            return "the time budget"
        return ""

    def _visit(self, call: Call, figure: ModuleError, depth: int, order: tuple[int, ...]) -> None:
        with self._pushed(figure):
            limit = self._limit(depth)
            if limit:
                self._culprit(figure, f"not searched further: {limit} reached", order)
                if limit not in " ".join(self.found.notes):
                    self.found.notes.append(f"the search stopped at {limit}: submodules not all examined")
                return
            self.found.expansions += 1
            children = self._examine_below(call, depth)
            if not children:
                self._culprit(figure, "", order)
                return
            modules = _by_module(children)
            suspects = [
                (i, c, f)
                for i, (c, f) in enumerate(modules)
                if self._suspect(f) and (self._gradual or _explains(f, figure))
            ]
            if (
                suspects
                and not self._gradual
                and not self._children_account_for(call, figure, suspects, children)
            ):
                suspects = []  # their differences are rounding noise of their own: the error is the call's
            if not suspects and self._gradual:
                # No call exceeds the threshold: follow the submodule with the largest relative error,
                # if its error can account for this call's (on a GPU every convolution differs a
                # little: TF32 rounding must not lead the search below the block that holds the error).
                best = max(range(len(modules)), key=lambda i: modules[i][1].relative)
                lead = [(best, *modules[best])]
                if (
                    modules[best][1].max_abs > 0
                    and _explains(modules[best][1], figure)
                    and self._children_account_for(call, figure, lead, children)
                ):
                    suspects = lead
            if not suspects:
                if depth == 0 and not self._replayed_root:
                    # Nothing below explains it: replay the call itself, to tell its own code from
                    # a difference it inherited with its inputs.
                    self._replayed_root = True
                    figure = self.examine(call, 0)
                    self._stack[-1] = figure
                    if not (self._suspect(figure) or self._gradual):
                        return
                self._culprit(figure, "introduced in its own code, between its submodules", order)
                return
            for index, child, child_figure in sorted(suspects, key=lambda item: -item[2].ratio):
                if child.args is not None:
                    self._visit(child, child_figure, depth + 1, (*order, index))
                else:  # its inputs were dropped with a call that did not differ
                    self._culprit(child_figure, "", (*order, index))
                child.args = child.kwargs = child.outputs = None

    def _children_account_for(
        self,
        parent: Call,
        parent_figure: ModuleError,
        suspects: list[tuple[int, Call, ModuleError]],
        children: list[tuple[Call, ModuleError]],
    ) -> bool:
        """Whether the suspect submodules' own errors account for ``parent``'s. Plain when one of them
        draws random numbers, makes NaN/Inf or differs at least as much as the parent; otherwise the
        parent is replayed on the target with each suspect call given the reference's output: unless at
        least :data:`ACCOUNT_SHARE` of the parent's error goes, their differences are rounding noise of
        their own (TF32 in the convolutions of a block whose own code is off, as measured on an H200)
        and the error stays with the parent."""
        for _, _, figure in suspects:
            if figure.draws_random or figure.nonfinite or figure.max_abs >= parent_figure.max_abs:
                return True
        if parent.args is None or parent.outputs is None or any(c.outputs is None for _, c, _ in suspects):
            return True  # nothing to replay it with: keep them
        # each suspect call: which call of its module it is within the parent, and its reference output
        wanted: dict[str, dict[int, list[Any]]] = {}
        for _, child, _ in suspects:
            same = [c for c, _ in children if c.path == child.path]
            occurrence = next(i for i, c in enumerate(same) if c is child)
            wanted.setdefault(child.path, {})[occurrence] = list(child.outputs or [])
        hooks = []
        for path, outputs in wanted.items():
            seen = [0]

            def give(_module: Any, _args: Any, output: Any, outputs: Any = outputs, seen: Any = seen) -> Any:
                seen[0] += 1
                replacement = outputs.get(seen[0] - 1)
                return with_tensors(output, replacement) if replacement is not None else output

            hooks.append(self.target_root.get_submodule(path).register_forward_hook(give))
        module = self.target_root.get_submodule(parent.path) if parent.path else self.target_root
        self.found.examined += 1
        try:
            outputs = self._replay(module, parent, self.side.cast)
        except Exception:
            return True
        finally:
            for hook in hooks:
                hook.remove()
        assert parent.outputs is not None
        left = difference(outputs, parent.outputs, rtol=self.rtol, atol=self.atol).max_abs
        return not math.isfinite(left) or left <= (1 - ACCOUNT_SHARE) * parent_figure.max_abs

    def _examine_below(self, call: Call, depth: int) -> list[tuple[Call, ModuleError]]:
        results: list[tuple[Call, ModuleError]] = []
        start: int | None = 0
        while start is not None:
            calls, start = self.calls_below(call, start)
            for child in calls:
                figure = self.examine(child, depth + 1)
                if not self._suspect(figure) and not self._gradual:
                    # examined: only a suspect's capture is kept, to expand it (and its output, to
                    # tell whether it accounts for its parent's error)
                    child.args = child.kwargs = child.outputs = None
                results.append((child, figure))
        return results

    @contextlib.contextmanager
    def _pushed(self, figure: ModuleError) -> Iterator[None]:
        self._stack.append(figure)
        try:
            yield
        finally:
            self._stack.pop()

    def _culprit(self, figure: ModuleError, note: str, order: tuple[int, ...]) -> None:
        culprit = replace(figure, introduces=True, note="; ".join(p for p in (figure.note, note) if p))
        self._met.append((order, culprit, [*self._stack[:-1], culprit]))


def _explains(child: ModuleError, parent: ModuleError) -> bool:
    """Whether a submodule's own error can account for its parent's: it draws random numbers, makes
    NaN/Inf, or its error is at least :data:`NOISE_SHARE` of the parent's. A submodule far below that
    (TF32 rounding in one convolution of a block whose output is off by much more) leaves the error
    to the parent's own code."""
    if child.draws_random or child.nonfinite:
        return True
    if not math.isfinite(parent.max_abs):
        return False
    return child.max_abs >= NOISE_SHARE * parent.max_abs


def _by_module(children: list[tuple[Call, ModuleError]]) -> list[tuple[Call, ModuleError]]:
    """One entry per submodule, in the order of its first call: the call to expand (its worst call
    whose inputs are still held) and its figure over all its calls (the worst, with the count of
    calls and whether any drew random numbers)."""
    order: dict[str, int] = {}
    counts: Counter[str] = Counter()
    drew: dict[str, bool] = {}
    worst: dict[str, tuple[Call, ModuleError]] = {}
    for call, figure in children:
        order.setdefault(call.path, len(order))
        counts[call.path] += 1
        drew[call.path] = drew.get(call.path, False) or figure.draws_random
        held = worst.get(call.path)
        if held is None or (call.args is not None, figure.ratio) > (held[0].args is not None, held[1].ratio):
            worst[call.path] = (call, figure)
    return [
        (call, replace(figure, calls=counts[path], draws_random=drew[path]))
        for path, (call, figure) in sorted(worst.items(), key=lambda item: order[item[0]])
    ]


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
