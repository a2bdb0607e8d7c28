"""Warnings that pytest-mps emits (a category of their own, so projects can filter or escalate them)."""

from __future__ import annotations

__all__ = ["PytestMPSWarning", "TrainingModeWarning"]


class PytestMPSWarning(UserWarning):
    """Base class of every warning pytest-mps emits."""


class TrainingModeWarning(PytestMPSWarning):
    """A module under test is in training mode: dropout-like layers draw from the device RNG, so
    device and CPU outputs diverge for reasons that have nothing to do with MPS."""
