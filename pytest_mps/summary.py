"""Deprecated (0.1): the session table moved to :func:`pytest_mps.tables.session_table`. This alias goes
in the next release."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["summary_lines"]

warnings.warn(
    "pytest_mps.summary is deprecated; use pytest_mps.tables.session_table", DeprecationWarning, stacklevel=2
)


def summary_lines(results: Sequence[Any], target: Any = None) -> list[str]:
    """The session table of ``results`` (``CheckResult`` objects or their ``to_dict()``)."""
    from pytest_mps.tables import session_table, target_heading

    rows = [r if isinstance(r, Mapping) else r.to_dict() for r in results]
    heading = target_heading(
        [str(r.get("target")) for r in rows], real_mps=all(r.get("real_mps") for r in rows)
    )
    return session_table(rows, heading=heading)
