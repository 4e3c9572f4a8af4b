"""famlab.analysis.claims: the paper's claims, declared in the spec YAMLs, checked on synthetic
results of three seeds whose verdict is known: holds, contradicted, inconclusive (noise, a tie, one
seed) and not testable."""

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
    "fam_init",
    "memory_kinds",
]


SEED_SHIFT = (0.0, 0.3, -0.2)  # what a seed does to every setting alike (the paired test removes it)
JITTER = ((0.004, -0.003, 0.001), (-0.002, 0.003, -0.004), (0.001, 0.002, -0.003))


def seed_values(mean: float, i: int, seeds: int = 3) -> list[float]:
    """Three seeds of one setting: a shared seed shift (large) plus a small per-trial jitter."""
    return [mean + SEED_SHIFT[s] + JITTER[i % 3][s] for s in range(seeds)]


def losses(spec: str, key: str, values: dict, seeds: int = 3) -> fa.SweepResults:
    """``seeds`` seeds per setting; ``values`` maps the setting to its mean objective (val/loss or,
    for state_passing, eval/bpb: lower is better)."""
    rows = [
        {key: k, "seed": s, "objective": x, "val/loss": x, "eval/bpb": x}
        for i, (k, mean) in enumerate(values.items())
        for s, x in enumerate(seed_values(mean, i, seeds))
    ]
    return synthetic(spec, rows, [key])


def verdicts(res: fa.SweepResults) -> dict[str, str]:
    return {r.id: r.verdict for r in fa.evaluate_claims(res)}


H, C, I = "holds", "contradicted", "inconclusive"


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
    assert list(table.columns) == ["claim", "famlab", "effect", "verdict"]
    assert table["claim"].tolist() == [c["statement"] for c in claims]

    assert set(table["verdict"]) <= {H, C, I}


def test_interior_optimum_of_fam_length():
    key = "model.fam_len"
    assert verdicts(losses("fam_length", key, {1: 2.2, 4: 2.0, 16: 2.1})) == {"interior_optimum": H}
    res = losses("fam_length", key, {4: 2.0, 16: 2.1, 64: 2.2})  # best is the smallest
    (claim,) = fa.evaluate_claims(res)
    assert claim.verdict == C and claim.evidence == "best L_F by val/loss (seed means): 4 of [4, 16, 64]"
    assert claim.effect.label == "16 - 4" and claim.effect.ci_high < 0
    noise = losses("fam_length", key, {4: 2.0, 16: 2.001, 64: 2.0})  # differences within the jitter
    assert verdicts(noise) == {"interior_optimum": I}
    (lacking,) = fa.evaluate_claims(losses("fam_length", key, {4: 2.0, 16: 2.1}))
    assert lacking.verdict == I and lacking.evidence == "not testable: the sweep lacks at least 3 L_F values"
    assert lacking.effect is None and lacking.holds is None


def test_one_seed_cannot_decide_anything():
    one = losses("fam_length", "model.fam_len", {1: 2.5, 4: 2.0, 16: 2.5}, seeds=1)
    (claim,) = fa.evaluate_claims(one)
    assert claim.verdict == I and "no interval" in claim.effect_text


def test_memory_segment_claims():
    good = losses("memory_segment", "variant", {"M0": 3.0, "M1": 2.5, "M2": 2.6, "FAM": 2.4})
    assert verdicts(good) == {"fam_beats_bswa": H, "bswa_memory_interior_optimum": H}
    (fam, _) = fa.evaluate_claims(good)
    assert fam.evidence.startswith("val/loss (seed means): FAM 2.434 vs best BSWA (M1) 2.532")
    assert fam.effect.label == "FAM - M1" and fam.effect.ci_low > 0
    bad = losses("memory_segment", "variant", {"M0": 3.0, "M1": 2.5, "M4": 2.3, "FAM": 2.4})
    assert verdicts(bad) == {"fam_beats_bswa": C, "bswa_memory_interior_optimum": C}  # M4 (the largest) best
    close = losses("memory_segment", "variant", {"M0": 3.0, "M1": 2.5, "M2": 2.6, "FAM": 2.499})
    assert verdicts(close)["fam_beats_bswa"] == I  # FAM and M1 within the noise
    few = losses("memory_segment", "variant", {"M1": 2.5, "M2": 2.6})
    assert verdicts(few) == {"fam_beats_bswa": I, "bswa_memory_interior_optimum": I}


def passkey_rows(accuracy: dict[str, tuple[float, float]], seeds: int = 3) -> list[dict]:
    """Per variant and seed: accuracy at 64 (the training length of the tiny passkey profile is
    128) and 1024, two depths each; seed s moves the long accuracy by SPREAD[s]."""
    spread = (0.0, 0.05, -0.05)
    rows = []
    for variant, (short, long) in accuracy.items():
        for seed in range(seeds):
            at_long = min(1.0, max(0.0, long + spread[seed])) if long not in (0.0, 1.0) else long
            table = [
                {"task": "passkey", "length": n, "depth": d, "accuracy": a}
                for n, a in ((64, short), (1024, at_long))
                for d in (0.25, 0.75)
            ]
            row = {"variant": variant, "seed": seed, "eval_table": table, "eval/accuracy": at_long}
            rows.append(row | {"objective": at_long})
    return rows


def test_passkey_claims_both_ways_and_ties():
    rows = passkey_rows({"M1": (0.5, 0.5), "M1_SG": (0.5, 0.0), "FAM_M0": (1, 0.75)})
    holds = synthetic("passkey", rows, ["variant"])
    assert fa.run_setting(holds, "data.seq_len") < 1024  # so length 1024 is beyond training (and 64 within)
    ids = ["fam_retrieves_longest", "fam_beats_bswa_at_training_length", "stop_gradient_no_better"]
    assert verdicts(holds) == dict.fromkeys(ids, H)
    (_, within, _) = fa.evaluate_claims(holds)
    assert within.evidence.startswith("accuracy up to the training length (seed means): FAM 1, best BSWA (M1) 0.5")
    rows = passkey_rows({"M1": (1, 0.0), "M1_SG": (1, 0.5), "FAM_M0": (0.5, 0.25)})
    fails = synthetic("passkey", rows, ["variant"])
    assert verdicts(fails) == dict.fromkeys(ids, C)
    tie = synthetic("passkey", passkey_rows({"M1": (1, 0.0), "M1_SG": (1, 0.0), "FAM_M0": (1, 0.0)}), ["variant"])
    results = fa.evaluate_claims(tie)
    assert [r.verdict for r in results] == [I, I, I] and all(r.effect.tie for r in results)
    no_eval = losses("passkey", "variant", {"M1": 2.0, "FAM_M0": 1.9})
    assert [r.evidence for r in fa.evaluate_claims(no_eval)] == ["not testable: the sweep lacks evaluation tables"] * 3


def test_stop_gradient_claim():
    def res(no_sg: float, sg: float) -> fa.SweepResults:
        rows = passkey_rows({"a": (1, no_sg), "b": (1, sg)})
        for row in rows:
            row["model.stop_grad"] = row.pop("variant") == "b"
        return synthetic("stop_gradient", rows, ["model.stop_grad"])

    assert verdicts(res(0.5, 0.0)) == {"stop_gradient_lowers_accuracy": H}
    assert verdicts(res(0.0, 0.5)) == {"stop_gradient_lowers_accuracy": C}
    (tie,) = fa.evaluate_claims(res(0.25, 0.25))
    assert tie.verdict == I
    assert tie.evidence.startswith("mean accuracy beyond the training length (seed means): no SG 0.25, SG 0.25")


def test_fam_init_claim_averages_every_length():
    def res(prompt: tuple[float, float], prefix: tuple[float, float]) -> fa.SweepResults:
        rows = passkey_rows({"prompt": prompt, "prefix": prefix})
        for row in rows:
            row["model.fam_init"] = row.pop("variant")
        return synthetic("fam_init", rows, ["model.fam_init"])

    (claim,) = fa.evaluate_claims(res((1.0, 0.5), (0.5, 0.25)))
    assert claim.verdict == H and claim.evidence.startswith("mean accuracy over every evaluated length (seed means)")
    assert claim.effect.label == "prompt - prefix" and claim.effect.mean == pytest.approx(0.375)
    assert verdicts(res((0.5, 0.25), (1.0, 0.5))) == {"prompt_beats_prefix": C}
    assert verdicts(res((1.0, 0.0), (1.0, 0.0))) == {"prompt_beats_prefix": I}  # a tie in every seed


def test_fam_position_and_position_offset():
    key = "model.fam_pos"
    assert verdicts(losses("fam_position", key, {"last": 2.0, "zero": 2.5})) == {"last_at_least_as_good": H}
    assert verdicts(losses("fam_position", key, {"last": 2.6, "zero": 2.5})) == {"last_at_least_as_good": C}
    assert verdicts(losses("fam_position", key, {"last": 2.5, "zero": 2.5})) == {"last_at_least_as_good": I}
    assert verdicts(losses("fam_position", key, {"zero": 2.5, "float": 2.0})) == {"last_at_least_as_good": I}
    key = "model.random_pos_offset"
    (on,) = fa.evaluate_claims(losses("position_offset", key, {True: 2.0, False: 2.1}))
    assert on.verdict == H and on.evidence == "val/loss (seed means): RPO on 2.034, off 2.132"
    assert on.effect.label == "RPO on - off"
    assert verdicts(losses("position_offset", key, {True: 2.1, False: 2.0})) == {"rpo_helps": C}
    assert verdicts(losses("position_offset", key, {True: 2.0, False: 2.0})) == {"rpo_helps": I}


def test_state_passing_claims():
    key = "model.rsp_prob"
    best = losses("state_passing", key, {0.0: 2.5, 0.5: 2.2, 0.8: 2.0, 1.0: 2.1})
    assert verdicts(best) == {"best_rsp_0.8": H, "rsp_helps": H}
    zero_best = losses("state_passing", key, {0.0: 2.0, 0.8: 2.2})
    assert verdicts(zero_best) == {"best_rsp_0.8": C, "rsp_helps": C}
    no_zero = fa.evaluate_claims(losses("state_passing", key, {0.5: 2.2, 0.8: 2.0}))
    assert [r.verdict for r in no_zero] == [H, I] and no_zero[1].evidence.endswith("lacks P(RSP) = 0")
    one = fa.evaluate_claims(losses("state_passing", key, {0.8: 2.0}))
    assert [r.evidence for r in one] == ["not testable: the sweep lacks 2 or more P(RSP) values"] * 2


def test_txl_and_fam_prev_blocks_use_the_papers_own_spread():
    # Table 8: BSWA and TXL differ by up to 2% (Qasper 5.0 vs 4.9): "about equal" allows 2% of BSWA's mean
    assert verdicts(losses("txl_vs_bswa", "variant", {"BSWA": 2.0, "TXL": 2.005})) == {"txl_about_equal": H}
    (far,) = fa.evaluate_claims(losses("txl_vs_bswa", "variant", {"BSWA": 2.0, "TXL": 2.1}))
    assert far.verdict == C and far.evidence.endswith("allowed gap 0.0407 (2.0%, paper)")
    edge = losses("txl_vs_bswa", "variant", {"BSWA": 2.0, "TXL": 2.04})  # the interval straddles the margin
    assert verdicts(edge) == {"txl_about_equal": I}
    # Table 6: XLSum over P = 1..6 spans 15.1-16.2, 1.1 / 15.74 = 7.0% of its mean
    key = "model.fam_prev_blocks"
    (flat,) = fa.evaluate_claims(losses("fam_prev_blocks", key, {1: 2.0, 2: 2.02, 3: 2.04}))
    assert flat.verdict == H and flat.evidence.endswith(f"({100 * 1.1 / 15.74:.1f}% of the mean, paper)")
    assert verdicts(losses("fam_prev_blocks", key, {1: 2.0, 2: 2.2, 3: 2.4})) == {"no_real_effect": C}  # 18%


def test_a_maximized_metric_is_not_negated():
    """Scores are 'higher is better': with a maximized objective the larger value wins."""
    rows = [
        {"model.fam_pos": p, "seed": s, "objective": x + 0.01 * s, "eval/accuracy": x + 0.01 * s + 0.001 * i}
        for i, (p, x) in enumerate((("last", 0.9), ("zero", 0.5)))
        for s in range(3)
    ]
    res = synthetic("fam_position", rows, ["model.fam_pos"])
    res.spec.metric, res.spec.direction = "eval/accuracy", "maximize"
    assert verdicts(res) == {"last_at_least_as_good": H}


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
    def spread_below(res, *, limit):
        scores = fa.seed_scores(res)
        effect = fa.paired_difference(scores["last"], scores["zero"], "last - zero")
        return fa.Finding(f"spread {np.ptp(scores.mean()):.2f}", [fa.Comparison(effect, "about_equal", limit)])

    monkeypatch.setitem(fa.CHECKS, "spread_below", spread_below)
    res = losses("fam_position", "model.fam_pos", {"last": 2.0, "zero": 2.5})
    claim = {"id": "narrow", "statement": "narrow", "check": "spread_below"}
    assert fa.check_claim(res, {**claim, "limit": 2}).verdict == H
    assert fa.check_claim(res, {**claim, "limit": 0.1}).verdict == C


def test_no_results_no_claims(tmp_path):
    res = fa.load_sweep("fam_length", "tiny", storage=f"sqlite:///{tmp_path / 'none.db'}")
    assert fa.evaluate_claims(res) == [] and fa.paper_claims(res).empty
    assert fa.spec_claims(load_spec("block_size", "tiny", validate_runs=False)) == []
