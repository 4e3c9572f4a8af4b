"""Where famlab finds the files users edit: sweep specs (``sweeps/*.yaml``) and analysis notebooks
(``analysis/*.ipynb``).

Both folders live at the top of the repository, where users edit them, and are shipped inside the
package as ``famlab/specs`` and ``famlab/notebooks`` (symbolic links to them in the source tree, which
setuptools copies into wheels as package data), so a non-editable install run from any folder still
finds them. The current directory's ``./sweeps`` and ``./analysis`` come first: a checkout (or a folder
with one's own specs) overrides what was installed.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SPEC_DIR = "sweeps"  # under the current directory
NOTEBOOK_DIR = "analysis"
PACKAGED_SPECS = "specs"  # under the installed famlab package
PACKAGED_NOTEBOOKS = "notebooks"


def packaged_dir(name: str) -> Path:
    """A data folder shipped inside the famlab package (``specs`` or ``notebooks``)."""
    return Path(str(files("famlab") / name))


def spec_dirs() -> list[Path]:
    """The folders searched for a spec name, in order: ``./sweeps``, then the packaged specs."""
    found: list[Path] = []
    for folder in (Path.cwd() / SPEC_DIR, packaged_dir(PACKAGED_SPECS)):
        if folder.is_dir() and all(folder.resolve() != f.resolve() for f in found):
            found.append(folder)
    return found


def spec_names() -> list[str]:
    """Every spec name that :func:`spec_file` finds."""
    return sorted({p.stem for folder in spec_dirs() for p in folder.glob("*.yaml")})


def spec_file(name_or_path: str | Path) -> Path:
    """A sweep spec: a YAML path that exists, else ``<name>.yaml`` from ``./sweeps``, else from the
    packaged specs. Raises ``ValueError`` with one line listing the known names."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    for folder in spec_dirs():
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    raise ValueError(f"sweep spec {str(name_or_path)!r} not found: give a path or one of {', '.join(spec_names())}")


def notebook_dir() -> Path:
    """The analysis notebooks: ``./analysis`` when it holds notebooks, else the packaged ones."""
    local = Path.cwd() / NOTEBOOK_DIR
    if local.is_dir() and any(local.glob("*.ipynb")):
        return local
    return packaged_dir(PACKAGED_NOTEBOOKS)
