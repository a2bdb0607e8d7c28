"""Benchmark (not a test): what the installed plugin adds to a plain pytest run.

A folder of trivial tests (500 by default: ``def test_i(): pass``) is run with ``python -m pytest``
twice per round, once with the plugin and once with ``-p no:mps``, in alternating order, for several
rounds after one untimed warm-up run of each (so both find byte code compiled and files in the page
cache; ``PYTHONDONTWRITEBYTECODE`` is unset for the runs, as an installed package has byte code); in
two output modes, ``-q`` and pytest's default, whose header lists the installed plugins (pytest reads
each one's package metadata for it). Each run is a fresh process, as a user's is. Printed: the median
wall time and the median CPU time (user + system, of the pytest process) of each, and their ratios.
The goal is a ratio of at most 1.03 (issue 14). On a loaded machine the CPU time is the steadier of
the two times.

``--profile`` also prints which of pytest-mps's modules a plain run imports, and the plugin's
cumulative time in each hook, from one run under ``cProfile``.

``--bare`` measures in a fresh virtual environment that holds pytest (the version running here) and a
wheel of this checkout installed without its dependencies: no other pytest plugin, the smallest run,
so the plugin's share is largest (it needs the package index, or a pip cache, for pytest).

``--instructions`` also counts the instructions each variant executes, under valgrind's callgrind
(one run each, ``PYTHONHASHSEED=0``): a figure that does not move with the machine's load, where wall
and CPU times on a shared virtual machine wander by a percent or two between runs. It needs
``valgrind`` on the PATH and takes about 20 s a variant.

Usage::

    python benchmarks/bench_startup.py                    # 500 tests, 11 rounds
    python benchmarks/bench_startup.py --tests 500 --rounds 21 --json startup.json
    python benchmarks/bench_startup.py --profile
    python benchmarks/bench_startup.py --instructions
    python benchmarks/bench_startup.py --bare --instructions
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "mps" for ep in entry_points(group="pytest11"))


def write_tests(folder: Path, count: int) -> None:
    """``count`` trivial tests in one module (and an empty ``conftest.py``)."""
    body = "\n".join(f"def test_{i}():\n    pass\n" for i in range(count))
    (folder / "test_many.py").write_text(body)
    (folder / "conftest.py").write_text("")


def command(python: str, folder: Path, *, plugin: bool, installed: bool, quiet: bool) -> list[str]:
    """The pytest command line of one variant."""
    args = [python, "-m", "pytest", *(["-q"] if quiet else []), str(folder)]
    if plugin:
        return args if installed else [*args, "-p", "pytest_mps.plugin"]
    return [*args, "-p", "no:mps"] if installed else args


def bare_environment(tmp: Path) -> str:
    """A virtual environment with pytest (this one's version) and a wheel of the checkout installed
    without its dependencies; its Python."""
    import pytest

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"pytest=={pytest.__version__}"], check=True)
    wheels = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp,
    )
    subprocess.run([*pip, "--no-deps", *map(str, wheels.glob("*.whl"))], check=True)
    return python


def timed_run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run (the CPU time of the child process, user + system)."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"pytest failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


def profile(python: str, folder: Path, env: dict[str, str], installed: bool) -> None:
    """Print the pytest-mps modules a plain run imports and the plugin's cumulative time per hook."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "run.prof"
        script = (
            "import sys, cProfile, pytest\n"
            f"args = {command(python, folder, plugin=True, installed=installed, quiet=True)[3:]!r}\n"
            f"cProfile.run('code = pytest.main(args)', {str(stats)!r})\n"
            "mods = sorted(m for m in sys.modules if m.startswith('pytest_mps'))\n"
            "print('MODULES ' + ' '.join(mods))\n"
            "heavy = [m for m in ('torch', 'numpy', 'diffusers', 'transformers') if m in sys.modules]\n"
            "print('HEAVY ' + ' '.join(heavy))\n"
        )
        out = subprocess.run([python, "-c", script], cwd=folder, env=env, capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.startswith(("MODULES ", "HEAVY ")):
                head, _, rest = line.partition(" ")
                print(f"{head.lower()}: {rest or '(none)'}")
        import pstats

        table = pstats.Stats(str(stats))
        rows = []
        for (filename, _line, name), (_cc, _nc, _tt, cumulative, _callers) in table.stats.items():  # type: ignore[attr-defined]
            if "pytest_mps" in filename and (name.startswith("pytest_") or name == "<module>"):
                where = filename.split("pytest_mps", 1)[1].lstrip("/")
                rows.append((cumulative, f"{where}:{name}"))
        print("plugin time under cProfile (cumulative, seconds; nested entries overlap):")
        for cumulative, label in sorted(rows, reverse=True)[:25]:
            print(f"  {cumulative:8.4f}  {label}")


def instructions(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    """User-space instructions one run executes (valgrind's callgrind), hash seed fixed."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={Path(tmp) / 'out'}", *cmd],
            cwd=cwd,
            env={**env, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
        )
    found = [line for line in done.stderr.splitlines() if "Collected :" in line]
    if done.returncode != 0 or not found:
        raise SystemExit(f"callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(found[-1].rsplit(":", 1)[1].strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests", type=int, default=500, help="trivial tests in the run (default 500)")
    parser.add_argument("--rounds", type=int, default=11, help="timed rounds, each runs both (default 11)")
    parser.add_argument("--profile", action="store_true", help="also profile one run with the plugin")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions under valgrind (callgrind)"
    )
    parser.add_argument(
        "--bare", action="store_true", help="measure in a fresh venv with pytest and the plugin only"
    )
    parser.add_argument("--json", type=Path, help="write the numbers here")
    options = parser.parse_args(argv)

    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    # An installed package runs from byte code (pip compiles it at install; pytest caches its rewritten
    # plugin modules): with PYTHONDONTWRITEBYTECODE set (as on some CI images), every run would compile
    # the plugin from source, which measures the machine's setting, not the plugin.
    bytecode_off = env.pop("PYTHONDONTWRITEBYTECODE", None) is not None
    modes = {"-q": True, "default": False}
    variants = {"plugin": True, "no:mps": False}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        folder = Path(tmp) / "tests"
        folder.mkdir()
        write_tests(folder, options.tests)
        if options.bare:
            python, installed = bare_environment(Path(tmp)), True
            env.pop("PYTHONPATH", None)
        else:
            python, installed = sys.executable, _entry_point_installed()
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)

        def cmd(plugin: bool, quiet: bool) -> list[str]:
            return command(python, folder, plugin=plugin, installed=installed, quiet=quiet)

        for quiet in modes.values():  # untimed: byte code, page cache, .pytest_cache
            for plugin in variants.values():
                timed_run(cmd(plugin, quiet), folder, env)
        walls: dict[str, list[float]] = {f"{m} {v}": [] for m in modes for v in variants}
        cpus: dict[str, list[float]] = {name: [] for name in walls}
        for i in range(options.rounds):
            for mode, quiet in modes.items():
                order = list(variants.items()) if i % 2 == 0 else list(reversed(variants.items()))
                for name, plugin in order:
                    wall, cpu = timed_run(cmd(plugin, quiet), folder, env)
                    walls[f"{mode} {name}"].append(wall)
                    cpus[f"{mode} {name}"].append(cpu)
        if options.profile:
            profile(python, folder, env, installed)
        counts: dict[str, int] = {}
        if options.instructions:
            if shutil.which("valgrind") is None:
                raise SystemExit("--instructions needs valgrind on the PATH (apt install valgrind)")
            counts = {
                f"{mode} {name}": instructions(cmd(plugin, quiet), folder, env)
                for mode, quiet in modes.items()
                for name, plugin in variants.items()
            }

    wall = {name: statistics.median(v) for name, v in walls.items()}
    cpu = {name: statistics.median(v) for name, v in cpus.items()}
    where = "a bare environment (pytest and the plugin only)" if options.bare else "this environment"
    print(
        f"\n{options.tests} trivial tests, {options.rounds} interleaved rounds, medians, {where} "
        f"(python {platform.python_version()}, plugin {'installed' if installed else 'via -p'}):"
    )
    if bytecode_off:
        print("(PYTHONDONTWRITEBYTECODE was set here; unset for the runs: byte code as an install has it)")
    print(f"{'':18}{'wall s':>10}{'cpu s':>10}{'instr. M':>12}")
    ratios: dict[str, dict[str, float]] = {}
    for mode in modes:
        for name in variants:
            key = f"{mode} {name}"
            counted = f"{counts[key] / 1e6:12.1f}" if counts else ""
            print(f"{key:18}{wall[key]:10.3f}{cpu[key]:10.3f}{counted}")
        mine, theirs = f"{mode} plugin", f"{mode} no:mps"
        ratios[mode] = {"wall": wall[mine] / wall[theirs], "cpu": cpu[mine] / cpu[theirs]}
        if counts:
            ratios[mode]["instructions"] = counts[mine] / counts[theirs]
        counted = f"{ratios[mode]['instructions']:12.4f}" if counts else ""
        print(f"{mode + ' ratio':18}{ratios[mode]['wall']:10.3f}{ratios[mode]['cpu']:10.3f}{counted}")
    print("goal: every ratio at most 1.030 (instructions: the figure a shared machine's load does not move)")
    if options.json:
        options.json.write_text(
            json.dumps(
                {
                    "tests": options.tests,
                    "rounds": options.rounds,
                    "bare": options.bare,
                    "wall": walls,
                    "cpu": cpus,
                    "median_wall": wall,
                    "median_cpu": cpu,
                    "instructions": counts or None,
                    "ratios": ratios,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
