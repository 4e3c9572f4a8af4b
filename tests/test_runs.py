"""famlab.runs.RunDir: the run directory layout, finding runs, reading and writing their files."""

from __future__ import annotations

import json

import pytest

from famlab.runs import RunDir, flatten_config, flatten_metrics


def make_run(root, name="tiny-fam", stamp="20261201-120000", *, metrics=True, ckpt=False):
    run = RunDir(root / name / stamp)
    run.path.mkdir(parents=True)
    run.config_path.write_text(
        "model:\n  fam_len: 4\n  attention: fam\ndata:\n  seq_len_schedule: [[0, 64]]\nseed: 1\n"
    )
    if metrics:
        run.append_metrics({"step": 1, "train/loss": 2.5})
    if ckpt:
        run.checkpoint_dir.mkdir()
        run.last_checkpoint.write_bytes(b"x")
    return run


def test_create_makes_unique_dirs(tmp_path):
    a = RunDir.create(tmp_path, "r")
    b = RunDir.create(tmp_path, "r")
    assert a.path.is_dir() and b.path.is_dir() and a.path != b.path
    assert a.path.parent == b.path.parent == tmp_path / "r"
    assert b.path.name.startswith(a.path.name)  # same second: "-1" appended


def test_resolve_run_and_run_name_dir(tmp_path):
    old = make_run(tmp_path, stamp="20261201-120000")
    new = make_run(tmp_path, stamp="20261201-130000")
    assert RunDir.resolve(old.path) == old
    assert RunDir.resolve(tmp_path / "tiny-fam") == new  # the newest run of that name
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        RunDir.resolve(tmp_path)


def test_resolve_checkpoint(tmp_path):
    run = make_run(tmp_path, ckpt=True)
    make_run(tmp_path, stamp="20261201-140000")  # newer, but without a checkpoint
    assert RunDir.resolve_checkpoint(run.path) == run.last_checkpoint
    assert RunDir.resolve_checkpoint(run.last_checkpoint) == run.last_checkpoint
    assert RunDir.resolve_checkpoint(tmp_path / "tiny-fam") == run.last_checkpoint
    assert RunDir.of_checkpoint(run.last_checkpoint) == run
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        RunDir.resolve_checkpoint(tmp_path / "nothing")


def test_find_runs_below_a_folder(tmp_path):
    a = make_run(tmp_path / "t0", stamp="20261201-120000")
    b = make_run(tmp_path / "t1", stamp="20261201-120001")
    make_run(tmp_path / "t2", stamp="20261201-120002", metrics=False)  # never started logging
    assert RunDir.all_under(tmp_path) == [a, b]
    assert RunDir.all_under(a.path) == [a]
    assert RunDir.newest_under(tmp_path / "t1") == b
    assert RunDir.newest_under(tmp_path / "missing") is None


def test_config_read_flat(tmp_path):
    run = make_run(tmp_path)
    flat = run.read_flat_config()
    assert flat["model.fam_len"] == 4 and flat["seed"] == 1
    assert flat["data.seq_len_schedule"] == ([0, 64],)  # the outer list becomes a tuple, as analysis groups on it
    assert RunDir(tmp_path / "none").read_config() == {}


def test_metrics_follow_skips_a_half_written_line(tmp_path):
    run = make_run(tmp_path)
    rows, offset = run.read_new_metrics(0)
    assert rows == [{"step": 1, "train/loss": 2.5}]
    with run.metrics_path.open("a") as f:
        f.write('{"step": 2, "train/lo')  # a writer in the middle of a row
    rows, offset2 = run.read_new_metrics(offset)
    assert rows == [] and offset2 == offset
    with run.metrics_path.open("a") as f:
        f.write('ss": 2.0}\n')
    rows, _ = run.read_new_metrics(offset2)
    assert rows == [{"step": 2, "train/loss": 2.0}]
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_final_metrics_update_keeps_other_sections(tmp_path):
    run = make_run(tmp_path)
    assert not run.is_complete() and run.read_final_metrics() == {}
    run.write_final_metrics({"step": 10, "val": {"loss": 1.5}})
    run.update_final_metrics(eval={"accuracy": 0.75, "csv": "x.csv"})
    data = json.loads(run.final_metrics_path.read_text())
    assert data == {"step": 10, "val": {"loss": 1.5}, "eval": {"accuracy": 0.75, "csv": "x.csv"}}
    assert run.is_complete()
    assert run.read_flat_final_metrics() == {"step": 10, "val/loss": 1.5, "eval/accuracy": 0.75, "eval/csv": "x.csv"}


def test_flatten_keeps_scalars_only():
    assert flatten_metrics({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "s"}) == {"a/b": 1, "d": None, "e": "s"}
    assert flatten_config({"a": {"b": [1, 2]}, "c": 3}) == {"a.b": (1, 2), "c": 3}


def test_wandb_id_reads_the_log_file_name_also_with_a_same_second_suffix(tmp_path):
    """wandb names a second folder of one run id started in the same second ``...-<id>-1``: the id is the
    log file's (run-<id>.wandb), not the folder's last dash-part."""
    run = RunDir(tmp_path / "r")
    assert run.wandb_id() is None
    for folder in ("offline-run-20260101_000000-abc123", "offline-run-20260101_000000-abc123-1"):
        (run.path / "wandb" / folder).mkdir(parents=True)
        (run.path / "wandb" / folder / "run-abc123.wandb").write_bytes(b"")
    assert run.wandb_id() == "abc123"
