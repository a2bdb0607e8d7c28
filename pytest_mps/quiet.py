"""Keeping third-party chatter out of check output: Diffusers' and Transformers' notices (their logging
below ERROR, such as "accelerate not found") and progress bars ("Loading weights", denoising steps) are
off for the block and restored afterwards. Errors still show."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator

__all__ = ["quiet_libraries"]

_LIBRARIES = ("diffusers", "transformers")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Diffusers' and Transformers' logging at ERROR and their progress bars off inside the block
    (only for libraries that are imported; nothing is imported here)."""
    restore = []
    for name in _LIBRARIES:
        if name not in sys.modules:
            continue
        try:
            logging = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        verbosity = logging.get_verbosity()
        bars = logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        restore.append((logging, verbosity, bars))
    try:
        yield
    finally:
        for logging, verbosity, bars in restore:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
