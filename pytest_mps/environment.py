"""What this machine offers the MPS backend, and why not, in one frozen record.

Detection never imports torch unless asked to (``probe_torch=True``) or torch is already imported:
MPS exists only on macOS, so on any other OS the answer is known without it, and pytest start-up stays
cheap. The facts checked come from the Diffusers MPS guide (macOS 12.6+, arm64 Python, torch 1.13+) and
from PyTorch's own later floors (macOS 13 for torch 2.6-2.8, macOS 14 for torch 2.9+).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from packaging.version import Version

    MIN_MACOS: Version
    MIN_TORCH: Version

__all__ = ["MIN_MACOS", "MIN_TORCH", "MPSEnvironment", "detect_environment"]

#: The version floors, as text (``MIN_MACOS`` and ``MIN_TORCH`` are their ``Version`` objects, made on
#: first use: parsing versions needs ``packaging``, which a pytest start-up off macOS never imports).
#: The Diffusers MPS guide: "macOS 12.6 or later (13.0 or later recommended)"; PyTorch 1.13 is the
#: first release it supports with ``mps`` (2.0 advised).
_FLOORS = {"MIN_MACOS": "12.6", "MIN_TORCH": "1.13"}
#: PyTorch raised the macOS floor of its MPS backend later on: (first torch release, macOS it needs).
_TORCH_MACOS_FLOOR_TEXT = (("2.9", "14.0"), ("2.6", "13.0"))
FALLBACK_VARIABLE = "PYTORCH_ENABLE_MPS_FALLBACK"


@dataclass(frozen=True)
class MPSEnvironment:
    """The facts about this machine that decide whether MPS can run, and the one reason it cannot.

    ``mps_built``/``mps_available`` are ``None`` when torch was not probed (macOS only: elsewhere MPS is
    known to be absent without importing torch).
    """

    os_name: str
    macos_version: str | None
    machine_arch: str
    python_arch: str
    rosetta: bool
    python_version: str
    torch_version: str | None
    diffusers_version: str | None
    mps_built: bool | None
    mps_available: bool | None
    memory_gb: float | None
    fallback_enabled: bool
    unusable_reason: str | None

    @property
    def usable(self) -> bool:
        """True when a real MPS device can be used by this Python process."""
        return self.unusable_reason is None and bool(self.mps_available)

    @property
    def probed(self) -> bool:
        """True when torch was asked (or did not need to be asked) whether MPS is available."""
        return self.mps_available is not None

    def summary(self) -> str:
        """One line for pytest's header: platform, Python, torch, Diffusers, memory, MPS state."""
        os_part = f"macOS {self.macos_version}" if self.macos_version else self.os_name
        arch = self.machine_arch
        if self.rosetta:
            arch += " (Python x86_64 under Rosetta)"
        elif self.python_arch != self.machine_arch:
            arch += f" (Python {self.python_arch})"
        memory = f"{self.memory_gb:.0f} GB" if self.memory_gb is not None else "memory unknown"
        fallback = f"{FALLBACK_VARIABLE}={'1' if self.fallback_enabled else 'unset'}"
        if self.usable:
            state = "MPS available"
        elif self.unusable_reason:
            state = f"MPS unavailable: {self.unusable_reason}"
        else:
            state = "MPS not probed yet (torch is imported on first use)"
        return (
            f"{state} | {os_part} {arch}, Python {self.python_version}, "
            f"torch {self.torch_version or 'missing'}, diffusers {self.diffusers_version or 'missing'}, "
            f"{memory}, {fallback}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for reports."""
        data = asdict(self)
        data["usable"] = self.usable
        return data


def _distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name``, read from its metadata's ``Version:`` line
    (parsing the whole metadata, as ``importlib.metadata.version`` does, costs the plugin's header a few
    milliseconds at every pytest start-up)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").splitlines():
        if not line:
            break  # the end of the headers
        if line.startswith("Version:"):
            return line[len("Version:") :].strip()
    return dist.version


def _sysctl(name: str) -> str | None:
    """Read one macOS sysctl value; None where it does not exist (e.g. proc_translated on Intel)."""
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def _memory_gb(os_name: str) -> float | None:
    if os_name == "Darwin":
        raw = _sysctl("hw.memsize")
        if raw and raw.isdigit():
            return int(raw) / 1024**3
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return None


def _parse_version(text: str | None) -> Version | None:
    if not text:
        return None
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def _floor(name: str) -> Version:
    from packaging.version import Version

    return Version(_FLOORS[name])


def __getattr__(name: str) -> Any:
    if name in _FLOORS:
        return _floor(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _probe_torch_mps() -> tuple[bool, bool]:
    import torch  # deferred: importing torch costs seconds, and only MPS questions need it

    backend = torch.backends.mps
    return bool(backend.is_built()), bool(backend.is_available())


def _unusable_reason(
    *,
    os_name: str,
    macos: Version | None,
    machine_arch: str,
    rosetta: bool,
    torch_version: str | None,
    mps_built: bool | None,
    mps_available: bool | None,
) -> str | None:
    """The first reason, in the order a user must fix them, that MPS cannot run; None if none is known."""
    if os_name != "Darwin":
        return f"MPS needs macOS on Apple silicon; this is {os_name or 'an unknown OS'}"
    if rosetta:
        return "Python is x86_64 under Rosetta on an arm64 Mac: install an arm64 (native) Python"
    if machine_arch != "arm64":
        return f"this Mac has a {machine_arch} processor; MPS needs Apple silicon (arm64)"
    min_macos, min_torch = _floor("MIN_MACOS"), _floor("MIN_TORCH")
    if macos is not None and macos < min_macos:
        return f"macOS {macos} is older than the {min_macos} that MPS needs"
    if torch_version is None:
        return "torch is not installed"
    torch_v = _parse_version(torch_version)
    if torch_v is not None:
        if torch_v.release < min_torch.release:
            return f"torch {torch_version} is older than the {min_torch} that MPS needs"
        for first_text, floor_text in _TORCH_MACOS_FLOOR_TEXT:
            first_torch, floor = _parse_version(first_text), _parse_version(floor_text)
            assert first_torch is not None and floor is not None
            if torch_v.release >= first_torch.release and macos is not None and macos < floor:
                return f"macOS {macos} is older than the {floor} that torch {first_torch}+ needs for MPS"
    if mps_built is False:
        return f"torch {torch_version} was built without MPS"
    if mps_available is False:
        return "torch.backends.mps.is_available() is False (no Metal device is visible to this process)"
    return None


def detect_environment(*, probe_torch: bool | None = None) -> MPSEnvironment:
    """Record this machine's MPS facts.

    Args:
        probe_torch: ask ``torch.backends.mps`` (imports torch). ``None`` (default) asks only where it
            is needed and cheap: never off macOS (MPS cannot exist there), and on macOS only when torch
            is already imported.
    """
    os_name = platform.system()
    python_arch = platform.machine()
    macos_text: str | None = None
    machine_arch = python_arch
    rosetta = False
    if os_name == "Darwin":
        macos_text = platform.mac_ver()[0] or None
        rosetta = _sysctl("sysctl.proc_translated") == "1"
        if rosetta or _sysctl("hw.optional.arm64") == "1":
            machine_arch = "arm64"
    torch_version = _distribution_version("torch")
    if torch_version is None and "torch" in sys.modules:
        torch_version = getattr(sys.modules["torch"], "__version__", None)

    mps_built: bool | None
    mps_available: bool | None
    if os_name != "Darwin":
        # torch's MPS backend is compiled only into macOS builds: the answer is "no" without asking.
        mps_built, mps_available = False, False
    elif torch_version is not None and (probe_torch or (probe_torch is None and "torch" in sys.modules)):
        mps_built, mps_available = _probe_torch_mps()
    else:
        mps_built = mps_available = None

    macos = _parse_version(macos_text)
    return MPSEnvironment(
        os_name=os_name,
        macos_version=macos_text,
        machine_arch=machine_arch,
        python_arch=python_arch,
        rosetta=rosetta,
        python_version=platform.python_version(),
        torch_version=torch_version,
        diffusers_version=_distribution_version("diffusers"),
        mps_built=mps_built,
        mps_available=mps_available,
        memory_gb=_memory_gb(os_name),
        fallback_enabled=os.environ.get(FALLBACK_VARIABLE, "") == "1",
        unusable_reason=_unusable_reason(
            os_name=os_name,
            macos=macos,
            machine_arch=machine_arch,
            rosetta=rosetta,
            torch_version=torch_version,
            mps_built=mps_built,
            mps_available=mps_available,
        ),
    )
