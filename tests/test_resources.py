"""Finding sweep specs and analysis notebooks: in the current directory, shipped in the package, and
from a real non-editable install (a wheel built from this tree, run from another folder)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from famlab.resources import notebook_dir, packaged_dir, spec_file, spec_names

REPO = Path(__file__).resolve().parent.parent


def test_packaged_folders_are_the_top_level_ones():
    """famlab/specs and famlab/notebooks ship sweeps/ and analysis/: the same files, not copies."""
    assert sorted(p.name for p in packaged_dir("specs").glob("*.yaml")) == sorted(
        p.name for p in (REPO / "sweeps").glob("*.yaml")
    )
    assert packaged_dir("specs").resolve() == (REPO / "sweeps").resolve()
    assert packaged_dir("notebooks").resolve() == (REPO / "analysis").resolve()


def test_spec_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = spec_file("fam_length")
    assert shipped.resolve() == (REPO / "sweeps" / "fam_length.yaml").resolve()  # from an empty folder
    (tmp_path / "sweeps").mkdir()
    local = tmp_path / "sweeps" / "fam_length.yaml"
    local.write_text("study: mine\n")
    (tmp_path / "sweeps" / "only_here.yaml").write_text("study: only_here\n")
    assert spec_file("fam_length") == local  # ./sweeps/ wins over the packaged spec
    assert spec_file("only_here") == tmp_path / "sweeps" / "only_here.yaml"
    assert spec_file(str(shipped)) == shipped  # an existing path wins over both
    assert {"only_here", "fam_length", "memory_segment"} <= set(spec_names())


def test_unknown_spec_is_one_line_naming_the_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as err:
        spec_file("fam_lenght")
    message = str(err.value)
    assert "\n" not in message and "'fam_lenght' not found" in message
    assert "fam_length, fam_position" in message
    with pytest.raises(ValueError, match="not found"):
        spec_file(tmp_path / "missing.yaml")  # a path that does not exist is not a spec


def test_notebook_dir_prefers_a_local_analysis_folder_with_notebooks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (notebook_dir() / "fam_length.ipynb").is_file()  # the packaged ones
    (tmp_path / "analysis").mkdir()
    assert notebook_dir() != tmp_path / "analysis"  # an analysis/ folder without notebooks is not theirs
    (tmp_path / "analysis" / "fam_length.ipynb").write_text("{}")
    assert notebook_dir() == tmp_path / "analysis"


@pytest.mark.slow  # about 10-25 s: a wheel build, a venv and an import of the sweep machinery
def test_non_editable_install_finds_specs_and_notebooks_from_another_folder(tmp_path):
    """Build a wheel of this tree (a copy, so the checkout stays clean), install it without
    dependencies into a fresh venv that reuses this interpreter's packages, and load a spec by name
    from a folder with no sweeps/ in it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("famlab", "sweeps", "analysis"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "whl", src], check=True)
    (wheel,) = (tmp_path / "whl").glob("famlab-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # into the empty venv first (this interpreter's famlab would count as installed already), then
    # let the venv see this interpreter's packages (torch, optuna, ...) after its own
    subprocess.run([*pip, "--python", venv / "bin" / "python", "install", "--no-deps", wheel], check=True, env=env)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "zz_outer.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import famlab; from famlab.sweep import load_spec; from famlab.resources import notebook_dir\n"
        "spec = load_spec('fam_length', 'tiny')\n"
        "print(famlab.__file__); print(spec.path); print(notebook_dir() / 'fam_length.ipynb')\n"
    )
    run = subprocess.run([venv / "bin" / "python", "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = run.stdout.split()
    installed = Path(out[0]).parent
    assert installed.is_relative_to(site)  # the installed copy, not this checkout
    assert Path(out[1]) == installed / "specs" / "fam_length.yaml"
    assert Path(out[2]).is_file() and Path(out[2]).is_relative_to(installed)
