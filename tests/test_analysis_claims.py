"""famlab.analysis.claims: the paper's claims, declared in the spec YAMLs, checked on synthetic
results whose verdict is known both ways (holds / does not / not testable)."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_store import synthetic, synthetic_trials

from famlab import analysis as fa
from famlab.sweep import load_spec

SPECS_WITH_CLAIMS = [
    "fam_length",
    "memory_segment",
    "passkey",
    "stop_gradient",
    "fam_position",
    "position_offset",
    "state_passing",
    "txl_vs_bswa",
    "fam_prev_blocks",
]


def losses(spec: str, key: str, values: dict) -> fa.SweepResults:
    """One seed per setting; ``values`` maps the setting to its objective (val/loss or, for
    state_passing, eval/bpb: lower is better)."""
    rows = [{key: k, "seed": 0, "objective": x, "val/loss": x, "eval/bpb": x} for k, x in values.items()]
    return synthetic(spec, rows, [key])


def verdicts(res: fa.SweepResults) -> dict[str, bool | None]:
    return {r.id: r.holds for r in fa.evaluate_claims(res)}


@pytest.mark.parametrize("name", SPECS_WITH_CLAIMS)
def test_every_spec_declares_checkable_claims(name):
    spec = load_spec(name, "tiny", validate_runs=False)
    claims = fa.spec_claims(spec)
    assert claims and len({c["id"] for c in claims}) == len(claims)
    assert all(c["check"] in fa.CHECKS and c["statement"] for c in claims)
    df = synthetic_trials(spec)
    df.attrs["params"] = spec.varied
    res = fa.SweepResults(spec, "sqlite:///synthetic.db", df, params=spec.varied)
    results = fa.evaluate_claims(res)  # a parameter the check does not take would raise here
    assert [r.id for r in results] == [c["id"] for c in claims]
    table = fa.paper_claims(res)
    assert list(table.columns) == ["claim", "famlab", "holds"]
    assert table["claim"].tolist() == [c["statement"] for c in claims]


def test_interior_optimum_of_fam_length():
    assert verdicts(losses("fam_length", "model.fam_len", {1: 2.2, 4: 2.0, 16: 2.1})) == {"interior_optimum": True}
    res = losses("fam_length", "model.fam_len", {4: 2.0, 16: 2.1, 64: 2.2})  # best is the smallest
    (claim,) = fa.evaluate_claims(res)
    assert claim.holds is False and claim.evidence == "best L_F by val/loss: 4 of [4, 16, 64]"
    (lacking,) = fa.evaluate_claims(losses("fam_length", "model.fam_len", {4: 2.0, 16: 2.1}))
    assert lacking.holds is None and lacking.evidence == "not testable: the sweep lacks at least 3 L_F values"


def test_memory_segment_claims():
    good = losses("memory_segment", "variant", {"M0": 3.0, "M1": 2.5, "M2": 2.6, "FAM": 2.4})
    assert verdicts(good) == {"fam_beats_bswa": True, "bswa_memory_interior_optimum": True}
    (fam, _) = fa.evaluate_claims(good)
    assert fam.evidence == "val/loss: FAM 2.4 vs best BSWA (M1) 2.5"
    bad = losses("memory_segment", "variant", {"M0": 3.0, "M1": 2.5, "M4": 2.3, "FAM": 2.4})
    assert verdicts(bad) == {"fam_beats_bswa": False, "bswa_memory_interior_optimum": False}  # M4 (the largest) best
    few = losses("memory_segment", "variant", {"M1": 2.5, "M2": 2.6})
    assert verdicts(few) == {"fam_beats_bswa": None, "bswa_memory_interior_optimum": None}


def passkey_rows(accuracy: dict[str, tuple[float, float]]) -> list[dict]:
    """One seed per variant; accuracy at lengths 256 (the training length of the tiny profile's
    passkey runs is below 1024) and 1024, two depths each."""
    rows = []
    for variant, (short, long) in accuracy.items():
        table = [
            {"task": "passkey", "length": n, "depth": d, "accuracy": a}
            for n, a in ((256, short), (1024, long))
            for d in (0.25, 0.75)
        ]
        rows.append({"variant": variant, "seed": 0, "eval_table": table, "eval/accuracy": long, "objective": long})
    return rows


def test_passkey_claims_both_ways_and_ties():
    holds = synthetic("passkey", passkey_rows({"M1": (1, 0.5), "M1_SG": (1, 0.0), "FAM_M0": (1, 0.75)}), ["variant"])
    assert fa.run_setting(holds, "data.seq_len") < 1024  # so length 1024 is beyond training
    assert verdicts(holds) == {"fam_retrieves_longest": True, "stop_gradient_no_better": True}
    fails = synthetic("passkey", passkey_rows({"M1": (1, 0.0), "M1_SG": (1, 0.5), "FAM_M0": (1, 0.25)}), ["variant"])
    assert verdicts(fails) == {"fam_retrieves_longest": False, "stop_gradient_no_better": False}
    tie = synthetic("passkey", passkey_rows({"M1": (1, 0.0), "M1_SG": (1, 0.0), "FAM_M0": (1, 0.0)}), ["variant"])
    results = fa.evaluate_claims(tie)
    assert [r.holds for r in results] == [None, None] and all("(a tie: uninformative)" in r.evidence for r in results)
    no_eval = losses("passkey", "variant", {"M1": 2.0, "FAM_M0": 1.9})
    assert [r.evidence for r in fa.evaluate_claims(no_eval)] == ["not testable: the sweep lacks evaluation tables"] * 2


def test_stop_gradient_claim_counts_a_tie_as_not_holding():
    def res(no_sg: float, sg: float) -> fa.SweepResults:
        rows = passkey_rows({"a": (1, no_sg), "b": (1, sg)})
        for row, stop_grad in zip(rows, (False, True)):
            row["model.stop_grad"] = stop_grad
            del row["variant"]
        return synthetic("stop_gradient", rows, ["model.stop_grad"])

    assert verdicts(res(0.5, 0.0)) == {"stop_gradient_lowers_accuracy": True}
    assert verdicts(res(0.0, 0.5)) == {"stop_gradient_lowers_accuracy": False}
    (tie,) = fa.evaluate_claims(res(0.25, 0.25))
    assert tie.holds is False and tie.evidence.startswith("mean accuracy beyond training length: no SG 0.25, SG 0.25")


def test_fam_position_and_position_offset():
    key = "model.fam_pos"
    assert verdicts(losses("fam_position", key, {"last": 2.0, "zero": 2.5})) == {"last_at_least_as_good": True}
    assert verdicts(losses("fam_position", key, {"last": 2.6, "zero": 2.5})) == {"last_at_least_as_good": False}
    assert verdicts(losses("fam_position", key, {"last": 2.5, "zero": 2.5})) == {"last_at_least_as_good": None}
    assert verdicts(losses("fam_position", key, {"zero": 2.5, "float": 2.0})) == {"last_at_least_as_good": None}
    key = "model.random_pos_offset"
    (on,) = fa.evaluate_claims(losses("position_offset", key, {True: 2.0, False: 2.1}))
    assert on.holds is True and on.evidence == "val/loss: RPO on 2, off 2.1"
    assert verdicts(losses("position_offset", key, {True: 2.1, False: 2.0})) == {"rpo_helps": False}
    assert verdicts(losses("position_offset", key, {True: 2.0, False: 2.0})) == {"rpo_helps": False}


def test_state_passing_claims():
    key = "model.rsp_prob"
    best = losses("state_passing", key, {0.0: 2.5, 0.5: 2.2, 0.8: 2.0, 1.0: 2.1})
    assert verdicts(best) == {"best_rsp_0.8": True, "rsp_helps": True}
    zero_best = losses("state_passing", key, {0.0: 2.0, 0.8: 2.2})
    assert verdicts(zero_best) == {"best_rsp_0.8": False, "rsp_helps": False}
    no_zero = fa.evaluate_claims(losses("state_passing", key, {0.5: 2.2, 0.8: 2.0}))
    assert [r.holds for r in no_zero] == [True, None] and no_zero[1].evidence.endswith("lacks P(RSP) = 0")
    one = fa.evaluate_claims(losses("state_passing", key, {0.8: 2.0}))
    assert [r.evidence for r in one] == ["not testable: the sweep lacks 2 or more P(RSP) values"] * 2


def test_txl_and_fam_prev_blocks_use_the_papers_own_spread():
    # Table 8: BSWA and TXL differ by up to 2% (Qasper 5.0 vs 4.9), so "about equal" allows 2%
    assert verdicts(losses("txl_vs_bswa", "variant", {"BSWA": 2.0, "TXL": 2.03})) == {"txl_about_equal": True}
    (far,) = fa.evaluate_claims(losses("txl_vs_bswa", "variant", {"BSWA": 2.0, "TXL": 2.1}))
    assert far.holds is False and far.evidence == "val/loss: BSWA 2, TXL 2.1 (5.00% apart; paper up to 2.0%)"
    # Table 6: XLSum over P = 1..6 spans 15.1-16.2, 1.1 / 15.74 = 7.0% of its mean
    key = "model.fam_prev_blocks"
    (flat,) = fa.evaluate_claims(losses("fam_prev_blocks", key, {1: 2.0, 2: 2.05, 3: 2.1}))  # 4.9%
    assert flat.holds is True and flat.evidence.endswith(f"(paper {100 * 1.1 / 15.74:.1f}%)")
    assert verdicts(losses("fam_prev_blocks", key, {1: 2.0, 2: 2.2, 3: 2.4})) == {"no_real_effect": False}  # 18%


def test_a_maximized_metric_is_not_negated():
    """Scores are 'higher is better': with a maximized objective the larger value wins."""
    rows = [
        {"model.fam_pos": p, "seed": 0, "objective": x, "eval/accuracy": x} for p, x in (("last", 0.9), ("zero", 0.5))
    ]
    res = synthetic("fam_position", rows, ["model.fam_pos"])
    res.spec.metric, res.spec.direction = "eval/accuracy", "maximize"
    assert verdicts(res) == {"last_at_least_as_good": True}


def test_a_claim_the_checks_cannot_read_is_an_error():
    res = losses("fam_position", "model.fam_pos", {"last": 2.0, "zero": 2.5})
    base = {"id": "x", "statement": "s", "needs": "n"}
    with pytest.raises(ValueError, match="unknown check 'nope': expected one of .*fam_beats_bswa"):
        fa.check_claim(res, {**base, "check": "nope"})
    with pytest.raises(ValueError, match="claim 'x' \\(check setting_beats\\)"):
        fa.check_claim(res, {**base, "check": "setting_beats", "better": "last"})  # no worse, no labels
    with pytest.raises(ValueError, match="missing check"):
        fa.check_claim(res, base)


def test_a_new_check_kind_plugs_in_by_name(monkeypatch):
    monkeypatch.setitem(fa.CHECKS, "spread_below", lambda res, *, limit: ("spread", bool(np.ptp([1, 2]) < limit)))
    res = losses("fam_position", "model.fam_pos", {"last": 2.0, "zero": 2.5})
    claim = {"id": "narrow", "statement": "narrow", "check": "spread_below"}
    assert fa.check_claim(res, {**claim, "limit": 2}).holds is True
    assert fa.check_claim(res, {**claim, "limit": 1}).holds is False


def test_no_results_no_claims(tmp_path):
    res = fa.load_sweep("fam_length", "tiny", storage=f"sqlite:///{tmp_path / 'none.db'}")
    assert fa.evaluate_claims(res) == [] and fa.paper_claims(res).empty
    assert fa.spec_claims(load_spec("block_size", "tiny", validate_runs=False)) == []
