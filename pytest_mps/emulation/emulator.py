"""The emulated MPS target as a context manager: :class:`EmulatedMPS`."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch

from pytest_mps.emulation import patches
from pytest_mps.emulation.findings import Finding
from pytest_mps.emulation.mode import PASSIVE, EmulationMode, Runtime

__all__ = ["EmulatedMPS", "emulated_mps", "fallback_from_env", "is_active", "suspended"]

# Modes of every active emulation (innermost last), so that suspended() can silence them all.
_ACTIVE: list[EmulationMode] = []


def fallback_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """``PYTORCH_ENABLE_MPS_FALLBACK`` as MPSFallback.mm reads it: an integer, enabled when non-zero."""
    value = (os.environ if environ is None else environ).get("PYTORCH_ENABLE_MPS_FALLBACK", "")
    try:
        return int(value.strip()) != 0
    except ValueError:
        return False


class EmulatedMPS:
    """A target whose tensors report ``device.type == "mps"`` while computing on the CPU, with MPS's rules.

    Inside ``with EmulatedMPS():`` ``torch.backends.mps.is_available()`` is True, ``pipe.to("mps")``
    gives emulated tensors (``pipe.device.type == "mps"``, ``tensor.is_mps``), Diffusers takes its MPS
    branches, and MPS's rules raise MPS's own exceptions: ``TypeError`` for float64, ``RuntimeError`` for
    more than 16 dimensions, ``NotImplementedError`` (or the CPU-fallback ``UserWarning`` with
    ``PYTORCH_ENABLE_MPS_FALLBACK=1``) for ops without an MPS kernel, and :class:`MPSAbortError` for
    buffers of 2**32 bytes or more (a process abort on a Mac). Output equals the CPU run's bit for bit:
    the same CPU kernels run, ``torch.Generator("mps")`` draws the CPU generator's numbers (the MPS default
    generator is the CPU one), and moving a tensor between the CPU and the emulated device aliases its
    memory, as ``.to("cpu")`` of a CPU tensor does (a copy would change buffer alignment, and with it
    the rounding of CPU GEMMs).

    Args:
        collect: record every hazard in :attr:`findings` and keep running instead of raising (an abort
            that cannot be survived, such as allocating the 24 GB of ``torch.empty(2**31, 3)``, still
            raises :class:`MPSAbortError` so the process does not die).
        fallback: ``PYTORCH_ENABLE_MPS_FALLBACK`` behaviour; None reads the environment variable now.

    Re-entrant: ``with`` blocks nest (also of the same instance); torch's patched attributes are restored
    when the outermost block exits, whether it exits normally or with an error. Tensors created inside
    remain usable afterwards (they compute on the CPU, without MPS's rules).
    """

    def __init__(self, *, collect: bool = False, fallback: bool | None = None) -> None:
        self.collect = collect
        self.fallback = fallback_from_env() if fallback is None else bool(fallback)
        self._runtime = Runtime(
            collect=collect, fallback=self.fallback, payload_device=self._payload_device()
        )
        self._modes: list[EmulationMode] = []
        self._owner = threading.get_ident()

    def _payload_device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def findings(self) -> list[Finding]:
        """Every hazard met so far, in order (one entry per occurrence)."""
        return self._runtime.findings

    @property
    def active(self) -> bool:
        """True inside the ``with`` block."""
        return bool(self._modes)

    def name_modules(self, roots: Mapping[str, Any]) -> None:
        """Name top-level objects for finding paths, e.g. ``emu.name_modules(pipe.components)`` gives
        ``unet.down_blocks.1.attentions.0...`` instead of ``UNet2DConditionModel.down_blocks...``."""
        self._runtime.namer.name(roots)

    def clear(self) -> None:
        """Forget the findings recorded so far."""
        self._runtime.findings.clear()

    def __enter__(self) -> EmulatedMPS:
        patches.acquire()
        try:
            mode = EmulationMode(self._runtime)
            mode.__enter__()
        except BaseException:
            patches.release()
            raise
        self._modes.append(mode)
        _ACTIVE.append(mode)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._modes:
            return
        mode = self._modes.pop()
        if mode in _ACTIVE:
            _ACTIVE.remove(mode)
        try:
            mode.__exit__(exc_type, exc, tb)
        finally:
            patches.release()

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return (
            f"<EmulatedMPS {state} collect={self.collect} fallback={self.fallback} "
            f"findings={len(self.findings)}>"
        )


def is_active() -> bool:
    """True while an emulation is active in this process (and not :func:`suspended`)."""
    return bool(_ACTIVE) and patches.installed() and not _suspension


_suspension: list[tuple[EmulationMode, Runtime]] = []


@contextmanager
def suspended() -> Iterator[None]:
    """Run plain CPU code inside an active emulation: torch's MPS API answers as on a machine without
    MPS again (so code takes its CPU branches, e.g. for a CPU reference run) and MPS's rules are off.
    Emulated tensors keep working (on the CPU). Nests; a no-op when no emulation is active."""
    if _suspension or not _ACTIVE:
        yield
        return
    for mode in _ACTIVE:
        _suspension.append((mode, mode.runtime))
        mode.runtime = PASSIVE
    token = patches.suspend()
    try:
        yield
    finally:
        patches.resume(token)
        while _suspension:
            mode, runtime = _suspension.pop()
            mode.runtime = runtime


def emulated_mps(*, collect: bool = False, fallback: bool | None = None) -> EmulatedMPS:
    """A new :class:`EmulatedMPS` (use it as a context manager)."""
    return EmulatedMPS(collect=collect, fallback=fallback)
