"""The target device a session tests on: real MPS, or a stand-in that always says it is one.

Only ``mps`` on a Mac yields an MPS verdict. ``emulated`` (MPS's rules, CPU arithmetic), ``cuda``,
``xpu`` and ``cpu`` run the same checks as stand-ins, and every label built here says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_mps.environment import MPSEnvironment, detect_environment
from pytest_mps.labels import target_label, target_name_of
from pytest_mps.options import DEVICE_VARIABLE as ENV_VARIABLE
from pytest_mps.options import TARGET_CHOICES

if TYPE_CHECKING:
    import torch

__all__ = [
    "ENV_VARIABLE",
    "TARGET_CHOICES",
    "Target",
    "TargetError",
    "resolve_target",
    "target_name_of",
]


class TargetError(ValueError):
    """The requested target cannot be used; the message is one line with the cause and a fix hint."""


@dataclass(frozen=True)
class Target:
    """A resolved target device.

    Attributes:
        name: ``mps``, ``emulated``, ``cuda``, ``xpu``, ``cpu``, or ``none`` when there is no target.
        requested: what the user asked for (``auto`` included).
        reason: why there is no target (``name == "none"``), in words a user can act on.
    """

    name: str
    requested: str
    reason: str | None = None

    @property
    def available(self) -> bool:
        """True when there is a device to test on."""
        return self.name != "none"

    @property
    def is_real_mps(self) -> bool:
        """True only for Apple's MPS backend on Apple hardware: the only target that yields a verdict."""
        return self.name == "mps"

    @property
    def is_mps_like(self) -> bool:
        """True when code under test sees ``device.type == "mps"`` (real MPS or the emulation)."""
        return self.name in ("mps", "emulated")

    @property
    def computes_on_cpu(self) -> bool:
        """True when the target's arithmetic runs on this machine's CPU (``cpu``, the emulation): work
        started beside it in other threads competes with it."""
        return self.name in ("cpu", "emulated")

    @property
    def is_standin(self) -> bool:
        """True for every available target that is not real MPS."""
        return self.available and not self.is_real_mps

    @property
    def device_type(self) -> str:
        """The torch device type tensors report on this target (``mps`` for the emulation too)."""
        if not self.available:
            raise TargetError(f"no target device: {self.reason}")
        return "mps" if self.is_mps_like else self.name

    @property
    def label(self) -> str:
        """How every output names this target; stand-ins say that they are stand-ins."""
        if self.is_real_mps:
            return "mps"
        if not self.available:
            return "none"
        return target_label(self.name)

    def torch_device(self) -> torch.device:
        """The ``torch.device`` pipelines are moved to."""
        import torch

        return torch.device(self.device_type)

    # --- backend operations: each backend spells these differently -------------------------------
    def _backend(self) -> Any:
        import torch

        return {
            "mps": getattr(torch, "mps", None),
            "cuda": torch.cuda,
            "xpu": getattr(torch, "xpu", None),
        }.get(self.name)

    def synchronize(self) -> None:
        """Wait for queued device work, so a clock read afterwards measures it."""
        backend = self._backend()
        if backend is not None and hasattr(backend, "synchronize"):
            backend.synchronize()

    def empty_cache(self, *, collect: bool = True) -> None:
        """Return cached device memory to the system (``torch.mps.empty_cache`` and its peers).

        Args:
            collect: run the garbage collector first, so unreachable tensors give their blocks back
                (a full collection costs a quarter of a second with a pipeline loaded).
        """
        backend = self._backend()
        if backend is not None and hasattr(backend, "empty_cache"):
            if collect:
                import gc

                gc.collect()
            backend.empty_cache()

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window where the backend keeps one."""
        backend = self._backend()
        if self.name in ("cuda", "xpu") and backend is not None:
            backend.reset_peak_memory_stats()

    def memory_bytes(self) -> int | None:
        """Peak memory since :meth:`reset_peak_memory` (cuda/xpu), or memory held now (mps); None if
        the backend reports none (cpu, emulated)."""
        backend = self._backend()
        if backend is None:
            return None
        if self.name == "mps":
            return int(backend.driver_allocated_memory())
        return int(backend.max_memory_allocated())


def _explain_mps(env: MPSEnvironment) -> str:
    return env.unusable_reason or "torch.backends.mps.is_available() is False"


def resolve_target(
    requested: str,
    *,
    environment: Callable[[], MPSEnvironment] | None = None,
) -> Target:
    """Turn a ``--mps-device`` value into a :class:`Target`.

    ``auto`` picks real MPS where it is usable and otherwise no target (tests marked ``mps`` skip with the
    reason); it never silently picks a stand-in. Explicit names are checked, and an unusable one raises
    :class:`TargetError` naming the cause and what to use instead.

    Args:
        requested: one of :data:`TARGET_CHOICES`.
        environment: returns the :class:`MPSEnvironment` to judge MPS by (tests pass fakes); it is
            called only when MPS must be judged.
    """
    value = requested.strip().lower()
    if value not in TARGET_CHOICES:
        raise TargetError(
            f"unknown target device {requested!r}; choose one of {', '.join(TARGET_CHOICES)} "
            f"(--mps-device, ini mps_device or ${ENV_VARIABLE})"
        )
    probe = environment or (lambda: detect_environment(probe_torch=True))
    if value in ("auto", "mps"):
        env = probe()
        if env.usable:
            return Target("mps", value)
        reason = _explain_mps(env)
        if value == "mps":
            raise TargetError(
                f"--mps-device mps: MPS is unavailable: {reason}; "
                "use --mps-device emulated, cuda or cpu for a stand-in run"
            )
        return Target(
            "none",
            value,
            f"no MPS device ({reason}); pass --mps-device emulated, cuda or cpu for a stand-in run",
        )
    if value == "emulated":
        from pytest_mps.emulated_target import emulation_unavailable_reason

        why = emulation_unavailable_reason()
        if why:
            raise TargetError(f"--mps-device emulated: {why}")
        return Target("emulated", value)
    if value in ("cuda", "xpu"):
        import torch

        backend = getattr(torch, value, None)
        if backend is None or not backend.is_available():
            raise TargetError(
                f"--mps-device {value}: torch {torch.__version__} sees no {value} device; "
                "use --mps-device cpu for a dry run"
            )
        return Target(value, value)
    return Target("cpu", value)
