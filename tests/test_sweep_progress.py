"""What `famlab sweep` prints while it works: one line per trial start and end (with the objective,
or FAIL and its reason), no Optuna INFO lines; the study names its objective; `sweep status` never
creates a store or a study, and shows the best trial."""

from __future__ import annotations

import re

import optuna
from sweep_helpers import load, write_spec

from famlab.cli import sweep_main as main
from famlab.sweep import default_storage, load_spec

OPTUNA_INFO = ("A new study created", "Using an existing study", "Trial 0 finished")


def test_trial_lines_status_best_line_and_metric_name(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa", "fam"]})  # 2 points
    out_root = tmp_path / "runs"
    assert main(["run", path, "--out-root", str(out_root)]) == 0
    out, err = capsys.readouterr()
    spec = load_spec(path)
    url = default_storage(spec, out_root)
    assert f"sweep: study {spec.study_name} in {url} (0 trial(s) so far), 2 points, 1 worker(s)" in out
    assert not any(info in out + err for info in OPTUNA_INFO), out + err
    for k, attention in enumerate(["bswa", "fam"], start=1):
        params = f"model.attention={attention} seed=0"
        assert f"trial {k}/2 start  {params}\n" in out, out
        done = re.search(rf"^trial {k}/2 done   {re.escape(params)} -> val/loss (\S+) \((\d+) s(; .+)\)$", out, re.M)
        assert done, out
        first = out.index(done.group(0)) == min(out.index(f"trial {j}/2 done") for j in (1, 2))  # one worker
        assert re.fullmatch(r"; 1 of 2 done, about \d+ s left" if first else "; 2 of 2 done", done.group(3)), out
        trial = next(t for t in load(url, spec).trials if t.params["model.attention"] == attention)
        assert float(done.group(1)) == float(f"{trial.value:.4g}")
        log = (out_root / spec.study_name / f"trial-{trial.number:04d}" / "train.log").read_text()
        assert "\r" not in log and "\x1b[" not in log and "step 4/4 train/loss" in log  # plain lines, no bar
    assert out.index("trial 1/2 start") < out.index("trial 1/2 done") < out.index("study t-tiny (complete: 2)")
    assert load(url, spec).metric_names == ["val/loss"]

    assert main(["status", path, "--out-root", str(out_root)]) == 0
    status = capsys.readouterr().out
    best = min(load(url, spec).trials, key=lambda t: t.value)
    assert f"best: trial {best.number} model.attention={best.params['model.attention']} seed=0 -> val/loss " in status
    assert "fail_reason" not in status and not any(info in status for info in OPTUNA_INFO)


def test_a_failing_point_prints_fail_lines_and_its_retry(tmp_path, capsys):
    path = write_spec(  # a run far too long for its trial_timeout: killed, failed, retried once
        tmp_path,
        grid={"model.mem_segment": [1]},
        overrides={"train.max_steps": 100_000, "train.val_every": 100_000},
        trial_timeout=5,
        max_retries=1,
    )
    assert main(["run", path, "--out-root", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 4, out
    assert lines[0] == "trial 1/1 start  model.mem_segment=1 seed=0"
    fail = re.compile(
        r"trial 1/1 FAIL   model\.mem_segment=1 seed=0: famlab train still running when trial_timeout .+ \(\d+ s; (.+)\)"
    )
    assert fail.fullmatch(lines[1]) and lines[1].endswith("; queued again)"), lines[1]
    # the retry may resume the killed run from its last checkpoint (said after "retry 1 of 1; ")
    assert lines[2].startswith("trial 1/1 start  model.mem_segment=1 seed=0 (retry 1 of 1"), lines[2]
    assert fail.fullmatch(lines[3]) and lines[3].endswith("; no retries left)"), lines[3]


def test_a_diverging_point_is_not_retried(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"train.lr": [1.0e30]}, max_retries=1)  # famlab train exits 3
    assert main(["run", path, "--out-root", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 2, out
    assert lines[1].startswith("trial 1/1 FAIL   train.lr=1e+30 seed=0: diverged, not retried")
    assert lines[1].endswith("; no retries left)"), lines[1]


def test_status_creates_no_store_and_no_study(tmp_path, capsys):
    path = write_spec(tmp_path, grid={"model.attention": ["bswa"]})
    out_root = tmp_path / "runs"
    assert main(["status", path, "--out-root", str(out_root)]) == 0
    store = default_storage(load_spec(path), out_root).removeprefix("sqlite:///")
    assert capsys.readouterr().out == f"study t-tiny: no trials yet (no store at {store})\n"
    assert not out_root.exists()  # not the file, not its folder

    other = tmp_path / "other.db"  # a store that exists, without this spec's study
    optuna.create_study(study_name="someone-else", storage=f"sqlite:///{other}")
    assert main(["status", path, "--storage", f"sqlite:///{other}"]) == 0
    assert capsys.readouterr().out == f"study t-tiny: no trials yet (no such study in sqlite:///{other})\n"
    assert optuna.get_all_study_names(f"sqlite:///{other}") == ["someone-else"]


def test_time_left_counts_points_and_running_trials(tmp_path):
    """The estimate: points not done x mean duration of completed trials / workers (this one and those running)."""
    import datetime

    import optuna

    from famlab.sweep.progress import TrialLines, duration_text

    spec = load_spec(write_spec(tmp_path, grid={"model.attention": ["bswa", "fam"]}, seeds=[0, 1, 2]))  # 6 points
    study = optuna.create_study()
    start = datetime.datetime(2026, 1, 1)
    dist = {"model.attention": optuna.distributions.CategoricalDistribution(["bswa", "fam"])}
    for seconds, attention in ((100, "bswa"), (300, "fam")):  # two completed points
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=0,
                trial_id=0,
                state=optuna.trial.TrialState.COMPLETE,
                value=1.0,
                datetime_start=start,
                datetime_complete=start + datetime.timedelta(seconds=seconds),
                params={"model.attention": attention, "seed": 0},
                distributions={**dist, "seed": optuna.distributions.CategoricalDistribution([0, 1, 2])},
                user_attrs={},
                system_attrs={},
                intermediate_values={},
            )
        )
    lines = TrialLines(spec)
    trial = study.ask({"model.attention": dist["model.attention"]})  # this one: done, 200 s
    trial.params  # noqa: B018 (the params are read from the trial)
    # done: 3 of 6 (two stored + this one); mean 200 s; no other trial running -> 3 x 200 s = 10 min
    assert lines.time_left(trial, 200.0) == "; 3 of 6 done, about 10 min left"
    study.ask()  # another worker's trial running: half the time
    assert lines.time_left(trial, 200.0) == "; 3 of 6 done, about 5 min left"
    assert [duration_text(s) for s in (45, 600, 3 * 3600)] == ["45 s", "10 min", "3.0 h"]
