"""``python -m pytest_mps``: the ``pytest-mps`` command line."""

from __future__ import annotations

from pytest_mps.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
