"""pytest's side of :mod:`pytest_mps.options`: each option registered as a ``--mps-*`` flag and its ini
key, and the frozen :class:`~pytest_mps.options.Settings` read once per run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_mps.options import OPTIONS, OptionError, Settings, resolve

__all__ = ["GROUP", "add_options", "read_settings"]

GROUP = ("mps", "pytest-mps: Diffusers pipelines on Apple's MPS backend")


def _ini_type(opt: Any) -> str:
    if opt.kind == "flag":
        return "bool"
    if opt.kind == "paths":
        return "paths"
    numeric = {"timeout": "float", "atol": "float", "rtol": "float", "max_cosine_distance": "float"}
    numeric.update({"xdist_workers": "int", "steps": "int", "size": "int"})
    kind = numeric.get(opt.name, "string")
    # int/float ini types exist since pytest 8.4; older pytest shows them as strings.
    major, minor = (int(p) for p in pytest.__version__.split(".")[:2])
    return kind if (major, minor) >= (8, 4) or kind == "string" else "string"


def add_options(parser: pytest.Parser) -> None:
    """Register every option of :data:`~pytest_mps.options.OPTIONS`: its flag (validated at parse time
    by its ``type=``) and, where it has one, its ini key."""
    group = parser.getgroup(*GROUP)
    for opt in OPTIONS:
        if opt.kind == "flag":
            group.addoption(opt.flag, dest=opt.dest, action="store_true", default=None, help=opt.help)
            if opt.negatable:
                group.addoption(
                    "--no-" + opt.flag[2:], dest=opt.dest, action="store_false", help=f"turn {opt.flag} off"
                )
        elif opt.kind == "paths":
            group.addoption(
                opt.flag,
                dest=opt.dest,
                nargs="+",
                action="extend",
                default=None,
                metavar=opt.metavar,
                help=opt.help,
            )
        else:
            group.addoption(
                opt.flag, dest=opt.dest, type=opt.type, default=None, metavar=opt.metavar, help=opt.help
            )
        if opt.ini:
            parser.addini(
                opt.ini_key,
                f"{opt.help} (ini for {opt.flag})",
                type=_ini_type(opt),  # type: ignore[arg-type]
                default=None,
            )


def read_settings(config: pytest.Config) -> Settings:
    """This run's settings (command line > environment > ini > default); a bad ini or environment
    value is a ``pytest.UsageError`` of one line."""
    given = {opt.name: config.getoption(opt.dest, None) for opt in OPTIONS}
    ini: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.ini:
            try:
                ini[opt.ini_key] = config.getini(opt.ini_key)
            except (ValueError, TypeError, pytest.UsageError) as exc:
                example = {"float": "1e-3", "int": "2", "bool": "true"}.get(_ini_type(opt), "...")
                hint = f"write e.g. {opt.ini_key} = {example}"
                raise pytest.UsageError(f"ini {opt.ini_key}: {exc}; {hint}") from None
    ini_dir = config.inipath.parent if config.inipath else config.rootpath
    try:
        return resolve(
            given, ini, os.environ, invocation_dir=Path(config.invocation_params.dir), ini_dir=ini_dir
        )
    except OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
