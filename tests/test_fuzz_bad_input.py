"""Bad input: one line, exit 2, never a traceback (#17 item 11).

Several hundred generated invalid invocations (tests/fuzz_cases.py), by family: every key of every config
dataclass with wrong types, non-finite and out-of-range values, misspelt; corrupt and foreign checkpoints
for ``train resume=`` and ``eval``; corrupt and non-mapping run ``config.yaml``; sweep specs with YAML
syntax and structural type errors; unusable storage URLs; unwritable or full output folders. Each runs
in-process through ``famlab.cli.main`` and must exit 2 with exactly one ``famlab: error:`` line naming the
key or file, no traceback, no password, and nothing written into its output folder. A sample runs as real
subprocesses. Negative controls: valid invocations in the same harness are accepted.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuzz_cases import SECRET, Case, all_cases, config_fields, make_world, train_into
from omegaconf import OmegaConf

from famlab.cli import main

CASES = all_cases()
BY_ID = {c.id: c for c in CASES}
PREFIX = "famlab: error:"
ERROR_LINE = re.compile(r"famlab( sweep)?: error: \S")  # argparse names the subcommand: "famlab sweep: error:"


@dataclass
class Outcome:
    rc: object
    out: str
    err: str
    accepted: list  # sweep actions reached (run_sweep / work): an input that should have been refused


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The bad files, and one real tiny run (its checkpoint for the controls and the truncated file)."""
    root = tmp_path_factory.mktemp("fuzz")
    good = root / "good"
    assert invoke(train_into(good, "name=good")).rc == 0
    run = next(good.glob("good/*"))
    w = make_world(root, (run / "checkpoints" / "last.ckpt").read_bytes())
    w.good_run = run
    return w


def invoke(argv: list[str], monkeypatch=None) -> Outcome:
    """``famlab.cli.main(argv)`` in-process: its exit status (or the traceback of what escaped it) and output.
    A sweep that would start trials or a worker is stopped there and recorded in ``accepted``."""
    accepted: list = []
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        import famlab.sweep

        mp.setattr(famlab.sweep, "run_sweep", lambda *a, **k: accepted.append("run_sweep"))
        mp.setattr(famlab.sweep, "work", lambda *a, **k: accepted.append("work"))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
            except BaseException:
                rc = "traceback"
                err.write(traceback.format_exc())
    return Outcome(rc, out.getvalue(), err.getvalue(), accepted)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []


def check_refused(case: Case, rc, out: str, err: str, accepted: list, out_dir: Path) -> None:
    text = out + err
    assert "Traceback" not in text and rc != "traceback", f"{case.id}: traceback\n{text}"
    assert not accepted, f"{case.id}: wrongly accepted (reached {accepted})"
    assert rc == 2, f"{case.id}: exit {rc!r}, expected 2 (wrongly accepted?)\n{text}"
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), f"{case.id}: not one error line:\n{err}"
    if case.names:
        assert case.names in lines[0], f"{case.id}: {case.names!r} not named in: {lines[0]}"
    assert SECRET not in text, f"{case.id}: printed a password: {text}"
    assert not files_under(out_dir), f"{case.id}: wrote {files_under(out_dir)}"


def groups() -> dict[str, list[Case]]:
    """One test per case, except the config keys: one test per key with all its bad values (fewer, faster tests)."""
    out: dict[str, list[Case]] = {}
    for case in CASES:
        out.setdefault(f"key_{case.names}" if case.id.startswith("key_") else case.id, []).append(case)
    return out


GROUPS = groups()


@pytest.mark.parametrize("group", list(GROUPS))
def test_bad_input_is_one_line_and_exit_2(group, world, tmp_path, monkeypatch):
    for i, case in enumerate(GROUPS[group]):
        out_dir = tmp_path / f"out{i}"
        argv = case.argv(world, out_dir)
        if case.setup:
            case.setup(monkeypatch, world, out_dir)
        result = invoke(argv)
        monkeypatch.undo()
        check_refused(case, result.rc, result.out, result.err, result.accepted, out_dir)


def test_every_family_and_every_config_key_is_fuzzed():
    families = {c.family for c in CASES}
    assert families == {"config", "checkpoint", "config.yaml", "spec", "storage", "out_dir"}
    keys = {k for k, _, _ in config_fields()}
    fuzzed = {c.names for c in CASES if c.family == "config"}
    assert keys <= fuzzed, keys - fuzzed
    assert len(CASES) >= 300


# ---------------------------------------------------------------- negative controls: the harness accepts these


def test_every_config_key_at_its_default_is_accepted(tmp_path):
    """Each key set to its own default value (the same harness and flags as the fuzzed values)."""
    for key, _, default in config_fields():
        if key == "preset":  # not a setting: `preset=NAME` selects the preset file
            continue
        value = OmegaConf.to_yaml(OmegaConf.create({"v": default})).split(":", 1)[1].strip()
        r = invoke(["train", "preset=tiny", f"{key}={value}", f"out_dir={tmp_path}", "--print-config"])
        assert r.rc == 0 and r.err == "", (key, value, r.err)


@pytest.mark.parametrize(
    "argv",
    [
        lambda w, o: ["train", "preset=tiny", f"out_dir={o}", "--print-config"],
        lambda w, o: ["train", f"resume={w.good_run}", f"out_dir={o}", "--print-config"],
        lambda w, o: ["train", f"resume={w.good_run / 'checkpoints' / 'last.ckpt'}", "--print-config"],
        lambda w, o: ["sweep", "status", str(w.valid_spec), f"--out-root={o}"],
        lambda w, o: ["sweep", "status", str(w.valid_spec), f"--storage=sqlite:///{o / 's.db'}"],
    ],
    ids=["train", "resume_run", "resume_checkpoint", "sweep_status", "sweep_status_storage"],
)
def test_valid_invocations_are_accepted(argv, world, tmp_path):
    r = invoke(argv(world, tmp_path / "out"))
    assert r.rc == 0 and PREFIX not in r.err and "Traceback" not in r.err, r.err


def test_valid_sweep_run_reaches_the_trials(world, tmp_path):
    r = invoke(["sweep", "run", str(world.valid_spec), f"--out-root={tmp_path}"])
    assert r.accepted == ["run_sweep"] and "Traceback" not in r.err, r.err


def test_valid_resume_and_eval_run(world, tmp_path):
    """The real thing the bad checkpoints imitate: resume the good run one step further, evaluate it."""
    r = invoke(["train", f"resume={world.good_run}", f"out_dir={tmp_path}", "train.max_steps=2"])
    assert r.rc == 0, r.err
    evals = ["data.passkey_eval_lengths=[1]", "data.passkey_eval_samples=1", "data.passkey_eval_depth_buckets=1"]
    r = invoke(["eval", str(world.good_run), *evals, f"--out={tmp_path / 'e.csv'}"])
    assert r.rc == 0 and (tmp_path / "e.csv").is_file(), r.err


def test_postgres_wrong_password_is_one_line(world, tmp_path, postgres):
    url = postgres.url().replace(postgres.password, SECRET)
    case = Case("postgres_wrong_password", "storage", lambda w, o: [], "famlab")
    for action in ("status", "run"):
        r = invoke(["sweep", action, str(world.valid_spec), f"--storage={url}", f"--out-root={tmp_path}"])
        check_refused(case, r.rc, r.out, r.err, r.accepted, tmp_path)
    good = invoke(["sweep", "status", str(world.valid_spec), f"--storage={postgres.url().replace('+psycopg2', '')}"])
    assert good.rc == 0 and "no trials yet" in good.out, good.err  # postgresql:// without a driver works


# ---------------------------------------------------------------- a sample as real subprocesses

SUBPROCESS_SAMPLE = [
    "key_model.fam_len=abc",
    "unknown_train.lrx",
    "resume_file_truncated",
    "eval_run_hello",
    "config_resume_list",
    "spec_status_syntax",
    "spec_run_grid_list",
    "storage_status_postgres_no_driver",
    "storage_run_not_a_url",
    "out_dir_under_file",
    "out_root_is_file",
]


def test_a_sample_as_real_subprocesses(world, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    for case_id in SUBPROCESS_SAMPLE:
        case = BY_ID[case_id]
        assert case.subprocess_ok
        out_dir = tmp_path / case_id
        proc = subprocess.run(
            [sys.executable, "-m", "famlab.cli", *case.argv(world, out_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        check_refused(case, proc.returncode, proc.stdout, proc.stderr, [], out_dir)
