"""Session reports: JSON (the machine-readable record, with a versioned schema), Markdown (for a pull
request or ``$GITHUB_STEP_SUMMARY``) and a self-contained HTML page with CPU, target and difference
images. Every writer works from the same report dictionary (:mod:`pytest_mps.reports.model`), whether it
comes from one pytest session, from pytest-xdist workers or from ``pytest-mps merge``.

Nothing here imports torch; numpy and Pillow are imported only to draw images.
"""

from __future__ import annotations
