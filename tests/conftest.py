"""Shared fixtures for pytest-mps's own tests."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from pathlib import Path

# Imported once, here, before any `pytester` fixture snapshots sys.modules: pytester removes modules
# first imported during a test, and torch's C extension cannot be imported a second time.
import diffusers.utils.logging
import pytest
import torch
import transformers.utils.logging
from _pytest import pytester as _pytester

# Diffusers and Transformers give their loggers a stream handler on first use, bound to the sys.stderr of
# that moment: done here, it is the session's; done inside an inner pytester run, it would be that run's
# capture, closed when the run ends ("--- Logging error ---" in every later test).
diffusers.utils.logging.get_verbosity()
transformers.utils.logging.get_verbosity()

_snapshot_init = _pytester.SysModulesSnapshot.__init__


def _keeps_libraries(self, preserve=None) -> None:
    """pytester restores sys.modules after in-process runs; library modules first imported by an
    inner run (torch extensions, diffusers' lazy modules) must survive, or their next import registers
    torch operators twice. Only the inner runs' own test modules are dropped."""

    def keep(name: str) -> bool:
        if preserve is not None and preserve(name):
            return True
        module = sys.modules.get(name)
        path = str(getattr(module, "__file__", "") or "")
        return name.startswith("pytest_mps") or "site-packages" in path or not path

    _snapshot_init(self, preserve=keep)


_pytester.SysModulesSnapshot.__init__ = _keeps_libraries

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


@pytest.fixture
def fake_mac(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make detection see an Apple-silicon Mac whose torch reports MPS, through small fakes of the
    facts it reads (platform, sysctl, ``torch.backends.mps``); the detection code itself runs for real.
    """

    def install(
        *,
        macos: str = "14.5",
        memory_gb: int = 32,
        rosetta: bool = False,
        arm64: bool = True,
        built: bool = True,
        available: bool = True,
    ) -> None:
        import pytest_mps.environment as environment

        sysctl = {
            "hw.memsize": str(memory_gb * 1024**3),
            "sysctl.proc_translated": "1" if rosetta else "0",
            "hw.optional.arm64": "1" if arm64 else None,
        }
        monkeypatch.setattr(platform, "system", lambda: "Darwin")
        monkeypatch.setattr(platform, "mac_ver", lambda: (macos, ("", "", ""), "arm64"))
        monkeypatch.setattr(platform, "machine", lambda: "x86_64" if (rosetta or not arm64) else "arm64")
        monkeypatch.setattr(environment, "_sysctl", sysctl.get)
        monkeypatch.setattr(torch.backends.mps, "is_built", lambda: built)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)

    return install


@pytest.fixture(autouse=True)
def _lean_inner_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytest runs (pytester) skip Hypothesis's plugin: pytester's sys.modules snapshot makes it
    re-import on every in-process run (1.5 s each), and no inner run here uses it."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", help="also run the tests marked slow (the zoo's full verdicts)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: minutes long; skipped unless --run-slow (the zoo's verdicts)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (or python benchmarks/zoo.py)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
