"""pytest start-up stays cheap: the plugin imports no torch, diffusers or numpy until a test needs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "numpy", "transformers")

PROBE = """
import json, sys
import pytest

class Probe:
    def pytest_sessionfinish(self, session):
        heavy = {heavy!r}
        out = {{name: name in sys.modules for name in heavy}}
        out["mps_loaded"] = session.config.pluginmanager.has_plugin("mps")
        print("\\nPROBE " + json.dumps(out))

sys.exit(pytest.main({args!r}, plugins=[Probe()]))
"""


def _run(tmp_path: Path, test_source: str, *args: str) -> dict:
    (tmp_path / "test_x.py").write_text(test_source)
    script = PROBE.format(heavy=HEAVY, args=["-q", "-p", "no:cacheprovider", *args, str(tmp_path)])
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert line, out.stdout + out.stderr
    return json.loads(line[len("PROBE ") :])


def test_plain_run_imports_nothing_heavy(tmp_path: Path) -> None:
    seen = _run(
        tmp_path, "import pytest\n\n@pytest.mark.mps\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n"
    )
    assert seen["mps_loaded"]
    assert not any(seen[name] for name in HEAVY), seen


def test_cpu_target_and_markers_import_nothing_heavy(tmp_path: Path) -> None:
    seen = _run(
        tmp_path,
        "import pytest\n\n@pytest.mark.skip_mps\n@pytest.mark.mps_requires(torch='>=2')\n"
        "def test_a():\n    pass\n",
        "--mps-device",
        "cpu",
    )
    assert not any(seen[name] for name in HEAVY), seen


def test_device_fixture_imports_torch(tmp_path: Path) -> None:
    seen = _run(
        tmp_path, "def test_a(mps_device):\n    assert mps_device.type == 'cpu'\n", "--mps-device", "cpu"
    )
    assert seen["torch"]
