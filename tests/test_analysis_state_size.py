"""Memory kinds side by side: the claim that one setting beats every other (``eval_beats_every``), the
memory_kinds spec's claims both ways, and the score against the state size (``state_size_table``, the plot and
the notebook cell)."""

from __future__ import annotations

import pytest
from analysis_store import synthetic
from test_analysis_claims import passkey_rows

from famlab import analysis as fa
from famlab.report.notebooks import build_notebook, sweep_notebook

KINDS = ["M1", "M2", "FM1", "FM2", "SUM_FAM", "FAM", "RMT", "INFINI", "BRT"]


def kinds_results(long: dict[str, float], state: dict[str, float | None] | None = None) -> fa.SweepResults:
    """memory_kinds results: every kind at 1.0 within the training length and ``long`` beyond it."""
    rows = passkey_rows({k: (1.0, long[k]) for k in KINDS})
    for row in rows:
        if state is not None:
            row["state_floats"] = state[row["variant"]]
    return synthetic("memory_kinds", rows, ["variant"])


def verdicts(res: fa.SweepResults) -> dict[str, str]:
    return {r.id: r.verdict for r in fa.evaluate_claims(res)}


def test_memory_kinds_claims_both_ways():
    paper = dict(M1=0.4, M2=0.45, FM1=0.5, FM2=0.55, SUM_FAM=0.1, FAM=0.9, RMT=0.2, INFINI=0.3, BRT=0.35)
    assert set(verdicts(kinds_results(paper)).values()) == {"holds"}
    reversed_ = {k: 1.0 - v for k, v in paper.items()}
    assert set(verdicts(kinds_results(reversed_)).values()) == {"contradicted"}


def test_beats_every_needs_every_comparison():
    """FAM above all but one kind: the claim is not 'holds' (one comparison contradicted decides it)."""
    one_better = dict(M1=0.4, M2=0.45, FM1=0.5, FM2=0.55, SUM_FAM=0.1, FAM=0.9, RMT=0.2, INFINI=0.3, BRT=0.95)
    (result,) = [r for r in fa.evaluate_claims(kinds_results(one_better)) if r.id == "fam_best_beyond_training"]
    assert result.verdict == "contradicted"
    assert "FAM 0.9" in result.evidence and "BRT 0.95" in result.evidence


def test_beats_every_without_a_kind_is_not_testable():
    rows = [r for r in passkey_rows({k: (1.0, 0.5) for k in KINDS}) if r["variant"] != "INFINI"]
    res = synthetic("memory_kinds", rows, ["variant"])
    (result,) = [r for r in fa.evaluate_claims(res) if r.id == "fam_best_beyond_training"]
    assert result.evidence.startswith("not testable")


def test_state_size_table_and_plot():
    long = dict(M1=0.4, M2=0.45, FM1=0.5, FM2=0.55, SUM_FAM=0.1, FAM=0.9, RMT=0.2, INFINI=0.3, BRT=0.35)
    state = {k: 1000.0 * (i + 1) for i, k in enumerate(KINDS)} | {"M2": None}  # a growing state: left out
    res = kinds_results(long, state)
    table = fa.state_size_table(res, where="beyond")
    assert "M2" not in table.index and len(table) == len(KINDS) - 1
    assert table.loc["FAM", "state_floats"] == 6000 and table.loc["FAM", "n"] == 3
    assert table.loc["FAM", "mean"] == pytest.approx(0.9) and table.loc["RMT", "mean"] == pytest.approx(0.2)
    assert table.loc["FAM", "ci_low"] < 0.9 < table.loc["FAM", "ci_high"]  # the seeds spread the long accuracy
    assert fa.state_size_table(res, where="all").loc["FAM", "mean"] == pytest.approx((1.0 + 0.9) / 2)
    fig = fa.plot_state_size(res, where="beyond")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and {t.get_text() for t in ax.texts} == set(KINDS) - {"M2"}


def test_no_state_sizes_no_table():
    res = kinds_results(dict.fromkeys(KINDS, 0.5))
    assert fa.state_size_table(res).empty and fa.plot_state_size(res) is None


def test_memory_kinds_notebook_has_the_state_size_cell():
    nb = sweep_notebook("memory_kinds")
    assert nb.state_size and nb.evaluate
    sources = ["".join(c.source) for c in build_notebook(nb).cells]
    assert any("fa.plot_state_size(res, where=where)" in s and '"beyond"' in s for s in sources)
    plain = sweep_notebook("memory_segment")
    assert not plain.state_size
    assert not any("plot_state_size" in "".join(c.source) for c in build_notebook(plain).cells)


def recall_results(long: dict[str, float], state: dict[str, int]) -> fa.SweepResults:
    """recall_kinds results: recall accuracy 0.9 at gap 0 (16 tokens) and ``long`` (plus a per-seed shift) at
    gaps of 1x and 2x the training length (144 and 272 tokens, beyond its 128)."""
    rows = []
    for kind in KINDS:
        for seed, shift in enumerate((0.0, 0.02, -0.02)):
            cells = [(0, 0.0, 16, 0.9), (128, 1.0, 144, long[kind] + shift), (256, 2.0, 272, long[kind] + shift)]
            table = [
                {"task": "recall", "gap": g, "gap_x": x, "length": n, "num_pairs": 4, "n": 128, "accuracy": a}
                | {"example_accuracy": a**4}
                for g, x, n, a in cells
            ]
            rows.append({"variant": kind, "seed": seed, "eval_table": table, "state_floats": state[kind]})
    return synthetic("recall_kinds", rows, ["variant"])


def test_recall_kinds_claims_and_state_size_read_the_recall_rows():
    state = {k: 1000 + 100 * i for i, k in enumerate(KINDS)}
    res = recall_results({k: 0.6 if k == "FAM" else 0.06 for k in KINDS}, state)
    assert set(verdicts(res).values()) == {"holds"}
    flipped = recall_results({k: 0.06 if k == "FAM" else 0.6 for k in KINDS}, state)
    assert set(verdicts(flipped).values()) == {"contradicted"}  # negative control: the claims can fail
    table = fa.state_size_table(res, where="beyond")  # the gaps past the training length only
    assert table.loc["FAM", "mean"] == pytest.approx(0.6) and table.loc["M1", "mean"] == pytest.approx(0.06)
    assert dict(table["state_floats"]) == state
    assert fa.state_size_table(res, where="all").loc["FAM", "mean"] == pytest.approx((0.9 + 0.6 + 0.6) / 3)
    nb = sweep_notebook("recall_kinds")
    assert nb.state_size and nb.evaluate
    # the same nine kinds as memory_kinds (PassKey), so the two state-size plots compare
    from famlab.sweep.spec import load_spec

    recall, passkey = load_spec("recall_kinds"), load_spec("memory_kinds")
    assert recall.variants == passkey.variants and list(recall.grid["variant"]) == KINDS
