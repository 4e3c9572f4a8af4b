"""Where famlab's data folders are (temporary: the sweep slice's famlab/resources.py replaces this at merge)."""

from __future__ import annotations

from pathlib import Path


def notebook_dir() -> Path:
    """The analysis notebooks (``analysis/*.ipynb``) of the source tree."""
    return Path(__file__).resolve().parent.parent / "analysis"
