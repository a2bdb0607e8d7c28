"""pytest-mps's fixtures: the environment, the target, its ``torch.device``, the ``mps_pipeline`` factory
and the device lock."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_mps.plugin.session import session_of

if TYPE_CHECKING:
    import torch

    from pytest_mps.environment import MPSEnvironment
    from pytest_mps.target import Target

__all__ = ["mps_device", "mps_device_lock", "mps_environment", "mps_pipeline", "mps_target"]

_AUTO_CHOICES = ("auto", "on", "off")


@pytest.fixture(scope="session")
def mps_environment(request: pytest.FixtureRequest) -> MPSEnvironment:
    """This machine's MPS facts (:class:`pytest_mps.MPSEnvironment`): versions, memory, and why MPS
    is unusable when it is."""
    return session_of(request.config).environment


@pytest.fixture(scope="session")
def mps_target(request: pytest.FixtureRequest) -> Target:
    """The session's resolved target device (:class:`pytest_mps.Target`); may be ``none``."""
    return session_of(request.config).target


@pytest.fixture
def mps_device(mps_target: Target) -> Iterator[torch.device]:
    """A ``torch.device`` for the target; skips the test (with the reason) when there is none."""
    if not mps_target.available:
        pytest.skip(f"needs an MPS target: {mps_target.reason}")
    yield mps_target.torch_device()


@pytest.fixture
def mps_device_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hold the device lock for the whole test (see :func:`pytest_mps.plugin.xdist.device_lock`). Tests
    that use ``mps_pipeline``, ``mps_device`` or the ``mps`` marker hold it already; this is for tests
    that reach the device another way (their own pipeline fixture, say)."""
    from pytest_mps.plugin.xdist import device_lock

    with device_lock(request.config):
        yield


@pytest.fixture
def mps_pipeline(request: pytest.FixtureRequest, mps_target: Target) -> Iterator[Any]:
    """A factory: ``mps_pipeline(source, *, pipeline_cls=None, torch_dtype=None,
    attention_slicing="auto", warmup="auto", **from_pretrained_kwargs)`` returns the pipeline on the
    target, in eval mode, without progress bars.

    ``source`` is a local pipeline folder, a hub id already in the local cache, a ``DiffusionPipeline``
    or a zero-argument callable; results name the pipeline after it (the folder's name, say), so two
    pipelines of one class stay apart. ``attention_slicing="auto"`` enables slicing on real MPS with
    under 64 GB of memory and ``warmup="auto"`` runs a 1-step pass on torch < 2.0 with real MPS (the
    Diffusers MPS guide's advice); both take "on"/"off". Loading happens once per session for the same
    arguments; each test gets the pipeline restored to its loaded state, and a test that changes its
    weights (dtype, device) makes the next one load afresh. Teardown frees target memory.
    """
    session = session_of(request.config)
    used: list[Any] = []

    def factory(
        source: Any,
        *,
        pipeline_cls: Any = None,
        torch_dtype: Any = None,
        attention_slicing: str = "auto",
        warmup: str = "auto",
        **from_pretrained_kwargs: Any,
    ) -> Any:
        from pytest_mps.fixture_pipeline import build_key, load_for_target
        from pytest_mps.identity import name_pipeline

        if not mps_target.available:
            pytest.skip(f"needs an MPS target: {mps_target.reason}")
        for name, value in (("attention_slicing", attention_slicing), ("warmup", warmup)):
            if value not in _AUTO_CHOICES:
                raise ValueError(f"mps_pipeline({name}={value!r}): choose one of {', '.join(_AUTO_CHOICES)}")
        key = build_key(source, pipeline_cls, torch_dtype, attention_slicing, warmup, from_pretrained_kwargs)
        pipe = session.pipelines.checkout(
            key,
            lambda: load_for_target(
                source,
                target=mps_target,
                environment=session.environment,
                pipeline_cls=pipeline_cls,
                torch_dtype=torch_dtype,
                attention_slicing=attention_slicing,
                warmup=warmup,
                **from_pretrained_kwargs,
            ),
        )
        name_pipeline(pipe, source)
        used.append(key)
        if session.emulation is not None:  # findings then name "unet.down_blocks.0..." paths
            session.emulation.name_modules(pipe.components)
        return pipe

    yield factory
    kept = [session.pipelines.checkin(key) for key in used]
    if used:
        # A dropped pipeline leaves garbage worth collecting; a kept one only cached blocks.
        mps_target.empty_cache(collect=not all(kept))
