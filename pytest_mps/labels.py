"""How outputs name each target (the standard library alone: signed receipts verify without torch or
packaging). Every label but real MPS's says it is a stand-in."""

from __future__ import annotations

__all__ = ["STANDIN_LABELS", "target_label", "target_name_of"]

#: The label of each stand-in target.
STANDIN_LABELS = {
    "emulated": "emulated mps (stand-in: MPS rules, CPU arithmetic)",
    "cuda": "cuda (stand-in for mps)",
    "xpu": "xpu (stand-in for mps)",
    "cpu": "cpu (stand-in for mps: CPU against CPU, a dry run)",
}


def target_label(name: str) -> str:
    """The label of target ``name`` (``mps``, ``none``, or a stand-in's)."""
    return STANDIN_LABELS.get(name, name)


def target_name_of(label: str) -> str:
    """The target name (``mps``, ``emulated``, ``cuda``...) behind a label (reports keep labels); an
    unknown label is returned as it is."""
    for name, text in STANDIN_LABELS.items():
        if label == text:
            return name
    return label
