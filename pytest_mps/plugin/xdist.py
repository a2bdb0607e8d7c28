"""pytest-xdist support: only the controller writes reports and shared files; workers send what it needs
(results travel in test reports' ``user_properties``; images, reference counts, the environment and the
target through ``workeroutput``); and only one worker at a time uses the real MPS device
(``--mps-xdist-workers N`` allows more). The hooks are registered only when pytest-xdist distributes
the run: in its workers, and in a controller with ``-n`` (see :mod:`.activation`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.plugin.activation import LOCK_KEY, XDIST_KEY, is_worker
from pytest_mps.plugin.session import session_of

if TYPE_CHECKING:
    from pytest_mps.plugin.session import MPSSession

__all__ = ["WORKER_KEY", "DeviceLock", "XdistHooks", "device_lock", "is_worker", "worker_input"]

#: The key of pytest-mps's entry in ``workerinput`` and ``workeroutput``.
WORKER_KEY = "pytest_mps"
_LOCK_FOLDER = "pytest-mps-locks"
#: Fixtures (and the marker) through which a test reaches the target device.
DEVICE_FIXTURES = frozenset({"mps_pipeline", "mps_device", "mps_device_lock"})


def worker_input(config: pytest.Config) -> dict[str, Any] | None:
    """What the controller told this worker (``None`` outside a worker)."""
    return getattr(config, "workerinput", {}).get(WORKER_KEY) if is_worker(config) else None


def lock_folder(config: pytest.Config) -> Path:
    """Where the device lock files live: pytest's cache folder, else a per-project temporary folder."""
    if getattr(config, "cache", None) is not None:
        return Path(config.cache.mkdir(_LOCK_FOLDER))
    import hashlib

    tag = hashlib.blake2b(str(config.rootpath).encode(), digest_size=6).hexdigest()
    uid = os.getuid() if hasattr(os, "getuid") else 0
    folder = Path(tempfile.gettempdir(), f"pytest-mps-locks-{uid}-{tag}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class DeviceLock:
    """An inter-process lock with ``slots`` places, one lock file per place (``fcntl.flock``), re-entrant
    within a process. A pytest-xdist worker takes place ``worker index % slots``, so at most ``slots``
    workers use the device at once. Where ``fcntl`` is missing (Windows, which has no MPS) it does
    nothing."""

    def __init__(self, folder: Path, *, slots: int = 1, slot: int = 0) -> None:
        self.folder = folder
        self.slots = max(1, slots)
        self.slot = slot % self.slots
        self._depth = 0
        self._guard = threading.RLock()
        self._handle: Any = None

    @property
    def path(self) -> Path:
        """This process's lock file."""
        return self.folder / f"device-{self.slot}.lock"

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block (nested blocks in the same process do not wait)."""
        try:
            import fcntl
        except ImportError:  # no flock: no MPS either
            yield
            return
        with self._guard:
            if self._depth == 0:
                self.folder.mkdir(parents=True, exist_ok=True)
                handle = open(self.path, "a+b")  # noqa: SIM115 - held across the block, closed below
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                except BaseException:
                    handle.close()
                    raise
                self._handle = handle
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    handle, self._handle = self._handle, None
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                    finally:
                        handle.close()


def device_lock(config: pytest.Config) -> contextlib.AbstractContextManager[None]:
    """A context manager around work on the target device: in a pytest-xdist worker whose target is
    real MPS it waits for the device (``--mps-xdist-workers``); anywhere else it does nothing.
    Re-entrant: the plugin already holds it around every test that uses ``mps_pipeline``,
    ``mps_device`` or the ``mps`` marker, so a check calling it again inside such a test does not wait."""
    lock = config.stash.get(LOCK_KEY, None)
    if lock is None or not session_of(config).target.is_real_mps:
        return contextlib.nullcontext()
    return lock.hold()


def uses_device(item: pytest.Item) -> bool:
    """Whether a test reaches the target device (its fixtures, or the ``mps`` marker)."""
    names = set(getattr(item, "fixturenames", ()))
    return bool(names & DEVICE_FIXTURES) or item.get_closest_marker("mps") is not None


def install(config: pytest.Config, session: MPSSession) -> None:
    """pytest-mps's side of a pytest-xdist run: a worker's device lock, a controller's hooks."""
    install_worker_lock(config, session)
    if not is_worker(config):
        hooks = XdistHooks(session)
        config.stash[XDIST_KEY] = hooks
        config.pluginmanager.register(hooks, "pytest-mps-xdist")


def install_worker_lock(config: pytest.Config, session: MPSSession) -> None:
    """In a pytest-xdist worker, set up the device lock the controller's settings ask for."""
    given = worker_input(config) or {}
    slots = given.get("slots", session.settings.xdist_workers)
    if not is_worker(config) or not slots:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int("".join(ch for ch in worker if ch.isdigit()) or 0)
    folder = given.get("locks")
    config.stash[LOCK_KEY] = DeviceLock(
        Path(folder) if folder else lock_folder(config), slots=slots, slot=index
    )
    # Registered only here, in a worker with a lock: every other run pays nothing per test for it.
    config.pluginmanager.register(LockHooks(), "pytest-mps-device-lock")


class LockHooks:
    """The per-test hook of a pytest-xdist worker that holds the device lock."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        """Hold the device lock around tests that use the real MPS device in a pytest-xdist worker."""
        lock = item.config.stash.get(LOCK_KEY, None)
        if lock is not None and uses_device(item) and session_of(item.config).target.is_real_mps:
            with lock.hold():
                return (yield)
        return (yield)


class XdistHooks:
    """Controller hooks that exist only with pytest-xdist (registered only when it is installed)."""

    def __init__(self, session: MPSSession) -> None:
        self.session = session
        self.worker_outputs: list[dict[str, Any]] = []
        self.workers = 0

    def pytest_configure_node(self, node: Any) -> None:
        """Tell each worker where references and locks live and how many may use the device."""
        from pytest_mps.plugin.references import reference_setup

        setup = reference_setup(self.session.config)
        node.workerinput[WORKER_KEY] = {
            "mode": setup.mode,
            "references": str(setup.folder) if setup.folder else None,
            "locks": str(lock_folder(self.session.config)),
            "slots": self.session.settings.xdist_workers,
        }
        self.workers += 1

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        from pytest_mps.plugin.reports import collector_of

        collector_of(self.session.config).set_order(ids)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        from pytest_mps.plugin.reports import collector_of

        output = getattr(node, "workeroutput", {}).get(WORKER_KEY)
        if output:
            self.worker_outputs.append(output)
            collector_of(self.session.config).images.update(output.get("images") or {})
            for line, places in (output.get("library_warnings") or {}).items():
                kept = self.session.library_warnings.setdefault(str(line), [])
                kept += [str(p) for p in places if str(p) not in kept]

    def emulation_notes(self) -> list[dict[str, int]]:
        """The workers' emulated-device notes (line -> count), one mapping per worker."""
        return [dict(o.get("emulation_notes") or {}) for o in self.worker_outputs]


def xdist_hooks(config: pytest.Config) -> XdistHooks | None:
    """The controller's pytest-xdist hooks, or None without pytest-xdist."""
    return config.stash.get(XDIST_KEY, None)
