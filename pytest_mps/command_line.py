"""What every ``pytest-mps`` command shares: an argparse parser whose errors are one line (the cause and
a fix, exit status 2, never a usage block or a traceback) and whose help pages share one layout (usage,
what the command does, its options, then its exit statuses)."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

__all__ = ["CommandParser", "UsageProblem"]


class UsageProblem(Exception):
    """Bad input to a command: one line for the user, exit status 2."""


class CommandParser(argparse.ArgumentParser):
    """The parser of ``pytest-mps <command>``.

    Args:
        command: the command's name (``check``, ``merge``...).
        description: what the command does, in a sentence or two.
        exits: its exit statuses, in one or two lines (shown last on the help page).
        epilog: anything else for the help page (examples), shown before the exit statuses.
        error: the exception a parse error raises (:class:`UsageProblem`, or the command's own).
    """

    def __init__(
        self,
        command: str,
        *,
        description: str,
        exits: str,
        epilog: str = "",
        error: type[Exception] = UsageProblem,
        **kwargs: Any,
    ) -> None:
        text = "\n\n".join(part for part in (epilog.strip(), "exit status: " + exits.strip()) if part)
        super().__init__(
            prog=f"pytest-mps {command}",
            description=description,
            epilog=text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )
        self._error_type = error

    def error(self, message: str) -> NoReturn:
        raise self._error_type(message)
