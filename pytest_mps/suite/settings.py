"""What the bundled suite checks and how: the pipeline folders (:class:`PipelineSpec`), the run's
settings (:class:`SuiteSettings`) and the suite's default target. All cross the worker boundary as
JSON. Importing this module is cheap."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_TIMEOUT_S", "PipelineSpec", "SuiteSettings", "default_target_name", "pipeline_specs"]

#: Seconds a suite check may run in a worker before it is killed as hung.
DEFAULT_TIMEOUT_S = 600.0


def default_target_name() -> str:
    """The suite's default target: ``mps`` where it is usable, else ``emulated`` where the emulation
    is available, else ``cpu`` (a dry run). Imports torch only on macOS."""
    from pytest_mps.emulated_target import emulation_unavailable_reason
    from pytest_mps.environment import detect_environment

    if detect_environment(probe_torch=True).usable:
        return "mps"
    if emulation_unavailable_reason() is None:
        return "emulated"
    return "cpu"


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline folder to check: its path and the label that names it in test ids, the table and
    every report."""

    path: str
    label: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"path": self.path, "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineSpec:
        """The inverse of :meth:`to_dict`."""
        return cls(path=str(data["path"]), label=str(data["label"]))


def pipeline_specs(paths: Sequence[str | os.PathLike[str]]) -> list[PipelineSpec]:
    """Specs for ``paths`` labelled by folder name (``tiny-sd``; ``tiny-sd-2`` for a second one)."""
    specs: list[PipelineSpec] = []
    seen: dict[str, int] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        base = path.resolve().name or str(raw)
        count = seen.get(base, 0) + 1
        seen[base] = count
        specs.append(PipelineSpec(str(path.resolve()), base if count == 1 else f"{base}-{count}"))
    return specs


@dataclass(frozen=True)
class SuiteSettings:
    """How the suite runs: the target name, call size, per-check options and tolerances from ini.

    Attributes:
        device: the target's name.
        steps, size: ``num_inference_steps`` and output side of every call (``None``: the smallest
            valid; the speed check then uses the pipeline's own).
        schedulers: scheduler class names for the sweep (empty: the compatible ones).
        allow_pickle: load pickled ``.bin`` weights too.
        ini_tolerance: tolerances from ini (``mps_atol``...).
        references: the folder of stored CPU references (a worker process opens its own store there).
        update_references: rewrite stored references (``--mps-update-references``).
        localize: say where a failing parity check's divergence starts.
        explore: examples of the exploration check (0: off); ``explore_database``: Hypothesis's example
            database folder.
    """

    device: str
    steps: int = 2
    size: int | None = None
    schedulers: tuple[str, ...] = ()
    allow_pickle: bool = False
    ini_tolerance: Mapping[str, float] = field(default_factory=dict)
    references: str | None = None
    update_references: bool = False
    localize: bool = True
    explore: int = 0
    explore_database: str | None = None

    def check_options(self, check: str) -> dict[str, Any]:
        """Keyword arguments the suite passes to check ``check``'s function."""
        if check == "schedulers" and self.schedulers:
            return {"schedulers": list(self.schedulers)}
        if check == "explore":
            return {"examples": self.explore or 20, "database": self.explore_database}
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (sent to worker processes)."""
        return {
            "device": self.device,
            "steps": self.steps,
            "size": self.size,
            "schedulers": list(self.schedulers),
            "allow_pickle": self.allow_pickle,
            "ini_tolerance": dict(self.ini_tolerance),
            "references": self.references,
            "update_references": self.update_references,
            "localize": self.localize,
            "explore": self.explore,
            "explore_database": self.explore_database,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteSettings:
        """The inverse of :meth:`to_dict`."""
        return cls(
            device=str(data["device"]),
            steps=int(data.get("steps", 2)),
            size=data.get("size"),
            schedulers=tuple(data.get("schedulers", ())),
            allow_pickle=bool(data.get("allow_pickle", False)),
            ini_tolerance=dict(data.get("ini_tolerance", {})),
            references=data.get("references"),
            update_references=bool(data.get("update_references", False)),
            localize=bool(data.get("localize", True)),
            explore=int(data.get("explore", 0)),
            explore_database=data.get("explore_database"),
        )
