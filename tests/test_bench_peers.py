"""famlab.bench.peers: each peer is built at famlab's parameter count and sees the same tokens as
its famlab counterpart (checked by perturbing one token); a missing peer is skipped with the
install hint. The peers are optional (``pip install -e '.[peers]'``): their tests skip without them."""

from __future__ import annotations

import argparse
import json
import warnings

import pytest
import torch

from famlab.bench import peers as bench_peers
from famlab.bench.common import base_config
from famlab.bench.peers import PAIRS, build_peer, famlab_config, num_params, train_step
from famlab.model import FamLM


def _args(**changes) -> argparse.Namespace:
    base = dict(vocab_size=64, d_model=64, n_layers=2, n_heads=2, block_size=16, mem_segment=1, fam_len=4, seed=0)
    base.update(changes)
    return argparse.Namespace(**base)


def _pair_models(pair: str, **changes) -> tuple[FamLM, torch.nn.Module]:
    pytest.importorskip(PAIRS[pair].module)
    cfg = famlab_config(base_config(_args(**changes)), pair)
    torch.manual_seed(0)
    ours = FamLM(cfg)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        bench_peers.ignore_peer_warnings()
        peer = build_peer(pair, cfg, seq_len=64)
    return ours, peer


def _run(model: torch.nn.Module, toks: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings(), torch.no_grad():
        bench_peers.ignore_peer_warnings()
        return model(toks)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_peer_matches_parameter_count_and_trains(pair):
    ours, peer = _pair_models(pair)
    ratio = num_params(peer) / num_params(ours)
    assert 0.9 <= ratio <= 1.1, (pair, num_params(peer), num_params(ours))
    toks = torch.randint(0, 64, (2, 65), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        bench_peers.ignore_peer_warnings()
        loss = train_step(peer.train(), toks[:, :-1], toks[:, 1:])
    assert torch.isfinite(torch.tensor(loss))
    assert sum(p.grad.abs().sum() for p in peer.parameters() if p.grad is not None) > 0


def _influence(model: torch.nn.Module, T: int, positions: list[int]) -> torch.Tensor:
    """[len(positions), T] booleans: which outputs change when the token at each position changes."""
    model = model.double().eval()
    toks = torch.randint(0, 64, (1, T), generator=torch.Generator().manual_seed(1))
    base = _run(model, toks)
    rows = []
    for p in positions:
        other = toks.clone()
        other[0, p] = (other[0, p] + 1) % 64
        rows.append((_run(model, other) - base).abs().amax(-1)[0] > 1e-9)
    return torch.stack(rows)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_peer_sees_the_same_tokens_as_famlab(pair):
    # one layer: local-attention (window = B, look_backward = 1) sees exactly BSWA's previous block
    # and own block; RMT, like FAM with m=0, and infini-transformer-pytorch, like infini with m=0, carry
    # everything earlier through their memories; both full attentions are causal
    ours, peer = _pair_models(pair, n_layers=1)
    B, T = 16, 64
    positions = [0, 5, B - 1, B, 2 * B + 3, T - 1]
    mine, theirs = _influence(ours, T, positions), _influence(peer, T, positions)
    assert torch.equal(mine, theirs), (pair, mine.int(), theirs.int())
    t = torch.arange(T)
    for row, p in zip(mine, positions):
        if pair == "local-attention":
            expected = (t >= p) & (t // B <= p // B + 1)
        else:
            expected = t >= p
        assert torch.equal(row, expected), (pair, p)


def test_missing_peers_are_skipped_with_the_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_peers, "peer_installed", lambda pair: False)
    args = ["--quick", "--seq-len", "64", "--block-size", "16", "--fam-len", "4", "--d-model", "32"]
    args += ["--n-layers", "1", "--n-heads", "2", "--iters", "1", "--threads", "1", "--out-dir", str(tmp_path)]
    res = bench_peers.main(args)
    captured = capsys.readouterr()
    assert "pip install -e '.[peers]'" in captured.err
    assert res["rows"] == [] and set(res["missing"]) == set(PAIRS)
    assert all(t["status"] == "n/a" for t in res["targets"].values())
    data = json.loads(next(tmp_path.glob("peers_*.json")).read_text())
    assert set(data["targets"]) == set(PAIRS)


def test_quick_peers_bench_when_installed(tmp_path, capsys):
    for pair in PAIRS.values():
        pytest.importorskip(pair.module)
    args = ["--quick", "--seq-len", "64", "--block-size", "16", "--fam-len", "4", "--d-model", "64"]
    args += ["--n-layers", "2", "--n-heads", "2", "--vocab-size", "64", "--iters", "1", "--threads", "1"]
    args += ["--out-dir", str(tmp_path)]
    res = bench_peers.main(args)
    assert "| model | version | params |" in capsys.readouterr().out
    names = [r["name"] for r in res["rows"]]
    expected = ["famlab-bswa", "local-attention", "famlab-fam-m0", "rmt", "famlab-infini-m0", "infini"]
    expected += ["famlab-rmt", "rmt-matched", "famlab-full", "x-transformers"]
    assert names == [*expected, "famlab-block-recurrent", "block-recurrent"]
    for r in res["rows"]:
        assert r["tokens_per_s"] > 0 and 0.9 <= r["params_vs_famlab"] <= 1.1
        assert (r["version"] is None) == (r["kind"] == "famlab")
    for pair, t in res["targets"].items():  # famlab's tokens/s over the peer's, against the pair's target
        ours, peer = (next(r for r in res["rows"] if r["name"] == n) for n in (PAIRS[pair].famlab_label, pair))
        assert t["value"] == pytest.approx(ours["tokens_per_s"] / peer["tokens_per_s"])
        assert t["status"] == ("PASS" if t["value"] >= PAIRS[pair].target else "FAIL")
    assert (tmp_path / "peers_latest.md").read_text().startswith("# famlab peers bench")
