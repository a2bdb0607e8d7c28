"""Gathering check results where the reports are written: from test reports' ``user_properties``
(serial runs and pytest-xdist workers alike), ordered by collection order so a ``-n N`` run gives the
same report as a serial one, and their images, encoded where the arrays are."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_mps.results import CheckResult

__all__ = ["RESULT_PROPERTY", "ImageSet", "ResultCollector", "image_key", "image_sets"]

#: The user property (``item.user_properties``) that carries one check's result as JSON.
RESULT_PROPERTY = "pytest_mps_result"

#: PNG bytes by name (``cpu``, ``target``, ``diff``) and the heatmap's facts (``diff_gain``...).
ImageSet = tuple[dict[str, bytes], dict[str, float]]


def image_key(nodeid: str | None, ordinal: int) -> str:
    """How a check's images are found: its test and its position among that test's checks."""
    return f"{nodeid}\x00{ordinal}"


def image_sets(results: Iterable[CheckResult]) -> dict[str, ImageSet]:
    """Encode the images of ``results`` (in recording order) under :func:`image_key`."""
    from pytest_mps.reports.images import encode_images

    counts: dict[str | None, int] = {}
    out: dict[str, ImageSet] = {}
    for result in results:
        ordinal = counts.get(result.nodeid, 0)
        counts[result.nodeid] = ordinal + 1
        if result.images:
            encoded = encode_images(result.images)
            if encoded is not None:
                out[image_key(result.nodeid, ordinal)] = encoded
    return out


class ResultCollector:
    """Check results as they arrive in test reports, each taken once, with the facts about the run that
    decide whether unused references can be listed (which tests ran or were skipped)."""

    def __init__(self) -> None:
        self._taken: dict[str, int] = {}
        self._records: list[tuple[str, int, dict[str, Any]]] = []
        self._order: dict[str, int] = {}
        self.images: dict[str, ImageSet] = {}
        self.ran: set[str] = set()
        self.skipped: set[str] = set()
        #: why each skipped test was skipped
        self.skip_reasons: dict[str, str] = {}
        #: the last line of the error of tests that failed without recording a result
        self.errors: dict[str, str] = {}
        #: each test's string user properties (the last report's), for tests that have any or did not
        #: pass
        self.properties: dict[str, dict[str, str]] = {}

    def add_report(self, report: Any) -> None:
        """Take the results in a test report that were not taken from an earlier phase's report (the
        setup, call and teardown reports each carry every property recorded so far)."""
        nodeid = report.nodeid
        self.ran.add(nodeid)
        props = getattr(report, "user_properties", ())
        if not props and report.outcome == "passed" and nodeid not in self.properties:
            return  # a plain passing phase of a test that recorded nothing (most reports): nothing to keep
        self.properties[nodeid] = {str(k): v for k, v in props if isinstance(v, str)}
        if report.skipped:
            self.skipped.add(nodeid)
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skip_reasons[nodeid] = str(reason).removeprefix("Skipped: ")
        elif report.failed and not any(name == RESULT_PROPERTY for name, _ in props):
            text = [line for line in str(report.longrepr or "").strip().splitlines() if line.strip()]
            self.errors[nodeid] = f"{report.when}: {text[-1].strip() if text else 'error'}"
        payloads = [
            value for name, value in getattr(report, "user_properties", ()) if name == RESULT_PROPERTY
        ]
        start = self._taken.get(nodeid, 0)
        for ordinal, raw in enumerate(payloads[start:], start):
            try:
                data = json.loads(raw) if isinstance(raw, str) else dict(raw)
            except (TypeError, ValueError):
                continue
            self._records.append((nodeid, ordinal, data))
        self._taken[nodeid] = max(start, len(payloads))

    def set_order(self, nodeids: Sequence[str]) -> None:
        """The collection order (``session.items``, or a pytest-xdist worker's collection)."""
        if not self._order:
            self._order = {nodeid: i for i, nodeid in enumerate(nodeids)}

    def not_run(self) -> list[str]:
        """Collected tests that produced no report (the run stopped early or a worker crashed)."""
        return [nodeid for nodeid in self._order if nodeid not in self.ran]

    def nodeids(self) -> list[str]:
        """Every test that reported, in collection order."""
        last = len(self._order)
        return sorted(self.properties, key=lambda n: (self._order.get(n, last), n))

    def records(self) -> list[tuple[str, int, dict[str, Any]]]:
        """``(nodeid, ordinal, result)`` in collection order, then recording order."""
        last = len(self._order)
        indexed = list(enumerate(self._records))
        indexed.sort(key=lambda pair: (self._order.get(pair[1][0], last), pair[1][1], pair[0]))
        return [record for _, record in indexed]

    def __len__(self) -> int:
        return len(self._records)
