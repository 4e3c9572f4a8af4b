"""A sweep checks every trial's whole run config (what `famlab train` would build) and its metric names before
the first trial starts, in this process; `famlab train` exiting 2 inside a sweep fails the trial for good."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState
from sweep_helpers import load, write_spec

from famlab.cli import main
from famlab.config import check_trainable, load_run_config
from famlab.config.metrics import logged_metrics
from famlab.config.trainable import passkey_prompt_len
from famlab.sweep import default_storage, load_spec, validate_trials, work

SPECS = sorted((Path(__file__).parents[1] / "sweeps").glob("*.yaml"))
PROFILES = [(p, prof) for p in SPECS for prof in OmegaConf.load(p).profiles]
TIB = 2**40


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("path,profile", PROFILES, ids=[f"{p.stem}-{prof}" for p, prof in PROFILES])
def test_every_shipped_spec_passes_at_every_profile(path, profile):
    spec = load_spec(str(path), profile, validate_runs=False)
    # a tiny profile must fit this machine; a paper profile is checked against a cluster-sized node
    validate_trials(spec, memory=None if profile in ("tiny", "quick") else TIB)


def test_a_passkey_seq_len_too_short_for_the_prompt_fails_before_any_trial(tmp_path, capsys):
    # passes every config-level check (load_run_config): only building the passkey task refuses it
    overrides = {"data.task": "passkey", "data.seq_len": 128, "data.recall_num_pairs": None}
    load_run_config("tiny", ["data.seq_len=128"])  # the loader alone accepts it
    path = write_spec(tmp_path, preset="tiny", overrides=overrides)
    text = Path(path).read_text().replace("  data.recall_num_pairs: null\n", "")
    Path(path).write_text(text)
    runs = tmp_path / "runs"
    assert main(["sweep", "run", path, "--out-root", str(runs)]) == 2
    err = _one_error_line(capsys)
    assert "t: trial (model.attention=bswa, model.mem_segment=0, seed=0)" in err
    assert "data.seq_len=128 is not allowed" in err and "passkey prompt" in err
    assert not runs.exists()  # no store, no trial
    assert main(["sweep", "worker", path, "--out-root", str(runs)]) == 2
    assert "data.seq_len=128" in _one_error_line(capsys) and not runs.exists()


def test_one_bad_grid_point_is_named(tmp_path, capsys):
    # recall with 8 pairs needs seq_len >= 31: the grid's 16 fails, its 64 would not
    path = write_spec(tmp_path, grid={"data.seq_len": [64, 16]})
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs")]) == 2
    err = _one_error_line(capsys)
    assert "trial (data.seq_len=16, seed=0)" in err and "every seq_len >= 31" in err


def test_each_categorical_search_choice_is_checked(tmp_path, capsys):
    space = {"data.seq_len": {"type": "categorical", "choices": [64, 32, 16]}}
    search = {"sampler": "random", "pruner": "none", "n_trials": 2, "space": space}
    path = write_spec(tmp_path, grid=None, search=search)
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs")]) == 2
    assert "trial (data.seq_len=16, seed=0)" in _one_error_line(capsys)
    space["data.seq_len"]["choices"] = [64, 32]  # negative control: every choice fits
    validate_trials(load_spec(write_spec(tmp_path, grid=None, search=search), validate_runs=False))


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("objective", {"metric": "val/losss", "direction": "minimize"}, "t.objective.metric='val/losss'"),
        ("objective", {"metric": "eval/accuracy", "direction": "maximize"}, "t.objective.metric='eval/accuracy'"),
        ("objective", {"metric": "run_dir", "direction": "minimize"}, "t.objective.metric='run_dir'"),
        ("metrics", ["val/bits_per_token", "val/bpt"], "t.metrics='val/bpt'"),
    ],
)
def test_metric_names_are_checked_up_front(tmp_path, capsys, field, value, expected):
    path = write_spec(tmp_path, **{field: value})
    assert main(["sweep", "run", path, "--out-root", str(tmp_path / "runs")]) == 2
    err = _one_error_line(capsys)
    assert expected in err and "expected one of step, tokens" in err and "val/loss" in err
    if value == {"metric": "val/losss", "direction": "minimize"}:
        assert "did you mean 'val/loss'?" in err
    assert not (tmp_path / "runs").exists()


def test_metric_names_follow_the_task_evaluation_and_validation(tmp_path):
    recall = load_run_config("tiny", ["data.task=recall", "data.recall_num_pairs=4", "data.seq_len=64"])
    assert "eval/accuracy" not in logged_metrics(recall)
    assert {"eval/accuracy", "eval/example_accuracy"} <= set(logged_metrics(recall, evaluate=True))
    text = load_run_config("tiny", ["data.task=text"])
    assert "eval/bpb" in logged_metrics(text, evaluate=True) and "eval/accuracy" not in logged_metrics(
        text, evaluate=True
    )
    no_val = load_run_config("tiny", ["data.val_batches=0"])
    assert "val/loss" not in logged_metrics(no_val) and "val/loss" in logged_metrics(load_run_config("tiny"))
    # an evaluating spec may name eval metrics (negative control of the objective test above)
    path = write_spec(tmp_path, evaluate=True, objective={"metric": "eval/accuracy", "direction": "maximize"})
    validate_trials(load_spec(path, validate_runs=False))


def test_logged_metrics_are_what_a_run_writes(tmp_path):
    from famlab.runs import RunDir
    from famlab.train import train

    for extra in (["data.val_batches=1"], ["data.val_batches=0"]):
        cfg = load_run_config(
            "tiny",
            ["data.task=recall", "data.seq_len=32", "data.recall_num_pairs=4", "data.batch_size=2", "model.d_model=32"]
            + ["train.max_steps=2", "train.val_every=0", "train.checkpoint_every=0", "logger.wandb=disabled"]
            + ["train.accelerator=cpu", f"out_dir={tmp_path}", *extra],
        )
        flat = RunDir(train(cfg)).read_flat_final_metrics()
        assert set(flat) == set(logged_metrics(cfg, numeric=False))
        numbers = {k for k, v in flat.items() if isinstance(v, int | float)}
        assert numbers == set(logged_metrics(cfg))


@pytest.mark.parametrize("instruction", [True, False])
@pytest.mark.parametrize("digits", [1, 4, 7])
def test_the_prompt_length_sweeps_check_is_the_one_the_task_builds(instruction, digits):
    from famlab.config import DataConfig
    from famlab.data.passkey import byte_pieces, symbol_pieces

    data = DataConfig(passkey_instruction=instruction, passkey_key_digits=digits)
    assert passkey_prompt_len(data) == byte_pieces(instruction).fixed_len("9" * digits)
    symbols = DataConfig(passkey_key_digits=digits, tokenizer="symbols")
    assert passkey_prompt_len(symbols) == symbol_pieces(64).fixed_len("9" * digits)
    assert passkey_prompt_len(DataConfig(tokenizer="/some/hf/folder")) is None


def test_a_valid_spec_still_runs(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"model.attention": ["fam"]})
    runs = tmp_path / "runs"
    assert main(["sweep", "run", path, "--out-root", str(runs)]) == 0
    study = load(default_storage(load_spec(path), runs), load_spec(path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def test_train_exiting_2_in_a_sweep_fails_the_trial_once(tmp_path):
    # a spec the sweep did not check (validate_runs=False): famlab train refuses seq_len=16 and exits 2
    path = write_spec(tmp_path, grid={"data.seq_len": [16]}, max_retries=2)
    spec = load_spec(path, validate_runs=False)
    url = default_storage(spec, tmp_path / "runs")
    work(spec, url, (tmp_path / "runs").resolve(), heartbeat=1)
    trials = load(url, spec).trials
    assert len(trials) == 1 and trials[0].state == TrialState.FAIL  # not retried
    assert trials[0].user_attrs["deterministic"] is True
    assert trials[0].user_attrs["fail_reason"].startswith("bad settings, not retried")
    assert "data.seq_len=16" in trials[0].user_attrs["fail_reason"]


def test_train_checks_what_the_sweep_checks(tmp_path, capsys):
    # the same function: famlab train refuses the passkey prompt that does not fit, before a run directory exists
    assert main(["train", "preset=tiny", "data.seq_len=128", f"out_dir={tmp_path}"]) == 2
    assert "famlab: error: data.seq_len=128 is not allowed" in _one_error_line(capsys)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="data.seq_len=128"):
        check_trainable(load_run_config("tiny", ["data.seq_len=128"]))
    check_trainable(load_run_config("tiny"))  # negative control


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.d_model=1000000000", "model.d_model=1000000000 is not allowed: a training step needs at least"),
        ("data.seq_len=100000000000000000000", "data.seq_len=100000000000000000000 is not allowed: a training step"),
        ("seed=100000000000000000000000", "seed=100000000000000000000000 is not allowed: expected an integer in [0,"),
    ],
)
def test_huge_sizes_are_one_line_and_exit_2(tmp_path, capsys, override, message):
    assert main(["train", "preset=tiny", override, f"out_dir={tmp_path}"]) == 2
    err = _one_error_line(capsys)
    assert message in err
    assert not list(tmp_path.iterdir())  # refused before any allocation or run directory


def test_the_memory_estimate_names_the_key_and_the_estimate():
    big_block = load_run_config("tiny", ["model.block_size=100000"])  # one block padded to 100000 tokens
    with pytest.raises(ValueError) as err:
        check_trainable(big_block, memory=8 * 2**30)
    msg = str(err.value)
    assert msg.startswith("model.block_size=100000 is not allowed: a training step needs at least 150 GiB")
    assert "more than the 8 GiB this machine has" in msg and "\n" not in msg
    check_trainable(big_block, memory=TIB)  # allowed where it fits: one block of causal attention
    check_trainable(load_run_config("tiny", ["model.block_size=512"]), memory=8 * 2**30)  # block = seq_len
    # a memory segment longer than the sequence costs nothing more (the model cuts it to the blocks there are)
    huge_m = load_run_config("tiny", ["model.mem_segment=100000", "model.attention=bswa"])
    check_trainable(huge_m, memory=2**30)
