"""Localising a divergence: when a pipeline on the target differs from its reference, say where it
starts: the first denoising step, the first module that introduces the error (its output on the
target given the reference's inputs to it), and a ranking of the modules that introduce the most.

    >>> loc = localize(pipe, check="cpu_parity")
    >>> print(loc.headline())
    divergence starts at step 0 in unet.up_blocks.1.resnets.0 (ResnetBlock2D): local max |diff| 0.12

The package is named ``localization`` so that the public function ``pytest_mps.localize`` never
shares its name with a submodule (importing ``pytest_mps.localize`` as a module would replace the
function on the package).
"""

from __future__ import annotations

from pytest_mps.localization.engine import LOCAL_TOLERANCES, localize
from pytest_mps.localization.records import VERDICTS, CallDifference, Localization, ModuleError

__all__ = ["LOCAL_TOLERANCES", "VERDICTS", "CallDifference", "Localization", "ModuleError", "localize"]
