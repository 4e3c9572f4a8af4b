"""The claims scoreboard (famlab.analysis.scoreboard, `famlab claims`, `famlab sweep run`'s claim lines)
on the real tiny sweep store of tests/analysis_store.py: its fam_length and memory_segment studies
carry the shipped specs' study names, the other studies have no results."""

from __future__ import annotations

from analysis_store import store  # noqa: F401

from famlab import analysis as fa
from famlab.cli import main
from famlab.sweep import load_spec


def test_claim_studies_are_every_spec_with_claims_in_the_papers_order():
    studies = fa.claim_studies("tiny")
    assert studies[:4] == ["fam_length", "fam_prev_blocks", "fam_position", "txl_vs_bswa"]  # Tables 5, 6, 7, 8
    assert studies[4] == "memory_segment" and "block_size" not in studies and "lr_search" not in studies
    for name in studies:
        assert fa.spec_claims(load_spec(name, "tiny", validate_runs=False))


def test_scoreboard_on_real_results(store):  # noqa: F811
    board = fa.scoreboard("tiny", storage=store["url"])
    claims = [(s, c["id"]) for s in fa.claim_studies("tiny") for c in fa.spec_claims(load_spec(s, "tiny"))]
    assert list(zip(board["study"], board["claim"])) == claims
    by_id = board.set_index("claim")
    # fam_length ran L_F in {1, 4} with two seeds: an interior optimum needs three values
    assert by_id.loc["interior_optimum", "verdict"] == fa.INCONCLUSIVE
    assert by_id.loc["interior_optimum", "evidence"] == "not testable: the sweep lacks at least 3 L_F values"
    # memory_segment ran M1 and FAM with one seed: a real effect, but no interval
    fam = by_id.loc["fam_beats_bswa"]
    assert fam["verdict"] == fa.INCONCLUSIVE and fam["n"] == 1 and fam["effect"].startswith("FAM - M1: ")
    assert fam["effect"].endswith("(n=1: no interval)")
    # studies without results: not run, with the command that produces them
    passkey = by_id.loc["fam_retrieves_longest"]
    assert passkey["verdict"] == fa.NOT_RUN and "famlab sweep run passkey --profile tiny" in passkey["evidence"]
    assert fa.verdict_counts(board) == f"3 inconclusive, {len(board) - 3} not run"


def test_claims_cli_prints_and_writes_the_scoreboard(store, tmp_path, capsys):  # noqa: F811
    csv = tmp_path / "claims.csv"
    assert main(["claims", "--storage", store["url"], "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("claims: 3 inconclusive, ") and "paired by seed" in lines[0]
    assert any(line.split()[:2] == ["inconclusive", "memory_segment:"] for line in lines)
    assert csv.read_text().splitlines()[0].startswith("study,paper,claim,statement,effect,ci_low,ci_high,n,verdict")
    assert main(["claims", "--storage", store["url"], "--markdown"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| paper | claim | famlab effect (95% CI, n seeds) | verdict |")
    assert "| Table 11 | FAM beats every BSWA memory segment (Table 11) | FAM - M1: " in md


def test_sweep_run_prints_its_claims(store):  # noqa: F811
    spec = load_spec("memory_segment", "tiny", validate_runs=False)
    text = fa.claims_text(spec, store["url"])
    assert text.splitlines()[0].startswith("claims: 2 inconclusive")
    assert "memory_segment: fam_beats_bswa" in text and "memory_segment: bswa_memory_interior_optimum" in text
    empty = load_spec("passkey", "tiny", validate_runs=False)
    assert fa.claims_text(empty, store["url"]) == ""  # nothing completed: no claim lines
