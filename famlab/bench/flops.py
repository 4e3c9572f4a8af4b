"""FLOP counting and the matmul ceiling of the training-step benchmark (``python -m famlab.bench``).

* **Model FLOPs** (:func:`forward_flops`), analytic, per training step = 3 x forward. Per row and
  layer: ``2*d*(H+2G)*D`` (QKV) + ``2*d*d`` (out) + ``2*d*ff_in + 2*ff*d`` (FF); per attended
  (query, key) pair ``4*H*D`` (scores and values); LM head ``2*d*V`` per token. ``computed``
  counts the work the kernels do (every key in the fast path's ``[P*L_F FAM | m*B memory | B
  own]`` window, masked or not, padding rows included; the reference path's full masked score
  matrices; causal half for ``full``, whose flash kernel skips masked tiles); ``useful`` counts
  only unmasked pairs and real tokens. Softmax, norms, RoPE and elementwise work are not counted.
* **Matmul FLOP/s** (:func:`time_matmul`) of ``[batch, m, k] @ [batch, k, n]``, at the shapes the
  model uses (:func:`model_matmul_shapes`).
* **Matmul ceiling** (:func:`matmul_ceiling_s`): the step time if every FLOP component ran at the
  FLOP/s measured for its own matmul shapes (block tokens' projections and FF, the LM head, block
  attention's scores and values, the FAM scan's batch x L_F-row projections, FF and small attention)
  and nothing else took time. It bounds what a variant can reach with these matmul kernels.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from famlab.config import ModelConfig

# ----------------------------------------------------------------------------------------------
# analytic FLOP counting


def _linear_row_flops(cfg: ModelConfig) -> tuple[int, int]:
    """(QKV, out-projection + FF) matmul FLOPs of one row through one layer."""
    d, D = cfg.d_model, cfg.head_dim
    qkv = 2 * d * (cfg.n_heads + 2 * cfg.kv_heads) * D
    ff_in = cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)
    finish = 2 * d * d + 2 * d * ff_in + 2 * cfg.ff_dim * d
    return qkv, finish


def _memory_keys(cfg: ModelConfig, blk: int, row: int) -> int:
    """Memory keys (tokens of earlier blocks) that token ``row`` of block ``blk`` attends."""
    B, m = cfg.block_size, cfg.mem_segment
    if cfg.attention == "full":
        return blk * B
    n = min(blk, m) * B
    if cfg.window is not None:  # txl: key at distance row + (m*B - j) for memory index j
        n = max(0, min(n, cfg.window - row))
    return n


def recurrent_flops(cfg: ModelConfig, batch: int, seq_len: int, rows: int | None = None) -> int:
    """Matmul FLOPs the Block-Recurrent cells add (``attention="block_recurrent"``; 0 otherwise), the same
    in every path: per recurrent layer, each token's queries for the state (``2*d*H*D``), its cross-attention
    to the S state vectors and the projection back (``2*d*d``); each block's state projections (``2*d*(2H+2G)*D``
    per state row: every block reads the state); each complete block's state update: self-attention over S
    and cross-attention over B keys, ``2*2d*d`` projection, FF, and the lstm gates' ``2*h*d`` input and
    forget projections (h = 2d, ff_dim). ``rows``: the token rows computed (the parallel paths pad the last
    block: n_blk * B; default ``seq_len``)."""
    n_rec = len(cfg.recurrent_layers)
    if not n_rec:
        return 0
    d, H, G, D, S, B = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.state_len, cfg.block_size
    pair = 4 * H * D
    n_blk, n_full = -(-seq_len // B), seq_len // B
    tokens = (seq_len if rows is None else rows) * (2 * d * H * D + S * pair + 2 * d * d)
    ff_in = cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)
    gates = 2 * 2 * (2 * d + cfg.ff_dim) * d if cfg.brt_gate == "lstm" else 0
    update = S * ((S + B) * pair + 2 * 2 * d * d + 2 * d * ff_in + 2 * cfg.ff_dim * d + gates)
    return n_rec * batch * (tokens + n_blk * S * 2 * d * (2 * H + 2 * G) * D + n_full * update)


def flop_path(cfg: ModelConfig, impl: str) -> str:
    """The code path a bench impl runs, for FLOP counting: ``wave`` (what ``fast`` picks for FAM, also
    under a whole-model compile), ``layer_major`` (every other model, and the compiled FAM scans) or
    ``reference``."""
    if impl in ("reference", "wave", "layer_major"):
        return impl
    if impl in ("fast", "model-compiled") and cfg.effective_fam_len:
        return "wave"
    return "layer_major"


def forward_flops(cfg: ModelConfig, batch: int, seq_len: int, impl: str = "fast") -> dict[str, Any]:
    """Analytic matmul FLOPs of one forward pass from a fresh state (see the module docstring).

    Returns ``{"computed": {...}, "useful": {...}}``, each with components ``token_linear`` (QKV,
    out, FF of the block tokens), ``fam_linear`` (the same for FAM rows: the fast path's scan or
    the reference path's [F; X] rows), ``init_linear`` / ``init_attn`` (prompt pass and initial
    FAM keys), ``attn`` (block attention; in the reference path also the FAM rows' attention),
    ``scan_attn`` (fast path: FAM queries over [F; block]), ``recurrent`` (Block-Recurrent cells,
    :func:`recurrent_flops`), ``head`` and ``total``. The wavefront
    path computes the FAM rows' attention with the block tokens' (in ``attn``, over the same keys) and
    ``useful`` is that of the layer-major path.
    """
    b, T = batch, seq_len
    B, m, P, L_F = cfg.block_size, cfg.mem_segment, cfg.fam_prev_blocks, cfg.effective_fam_len
    H, D, nl = cfg.n_heads, cfg.head_dim, cfg.n_layers
    pair = 4 * H * D  # scores + values per (query, key) pair
    qkv_row, finish_row = _linear_row_flops(cfg)
    row = qkv_row + finish_row
    n_blk, n_full = -(-T // B), T // B
    zero = dict.fromkeys(("token_linear", "fam_linear", "init_linear", "init_attn", "attn", "scan_attn", "head"), 0)
    comp, use = dict(zero), dict(zero)
    comp["head"] = use["head"] = b * T * 2 * cfg.d_model * cfg.vocab_size
    if L_F:  # initial state: prompt pass (one row set, no offset) and QKV of F_0 for the batch
        init = nl * (L_F * row + b * L_F * qkv_row)
        comp["init_linear"] = use["init_linear"] = init
        comp["init_attn"] = use["init_attn"] = nl * L_F * L_F * pair
    tok_useful = 0  # (query, key) pairs of real tokens, per batch item and layer
    for blk in range(n_blk):
        nb = min(B, T - blk * B)
        for r in range(nb):
            # FAM states S_{blk-P+1} .. S_blk that exist (the reference: older ones + the current F)
            tok_useful += min(blk + 1, P) * L_F + _memory_keys(cfg, blk, r) + r + 1
    use["token_linear"] = nl * b * T * row
    use["attn"] = nl * b * tok_useful * pair
    path = flop_path(cfg, impl)
    if path != "reference":
        if cfg.attention == "full":
            comp["token_linear"] = use["token_linear"]
            comp["attn"] = use["attn"]  # causal flash kernel: masked tiles are skipped
        else:
            Tp, Lk = n_blk * B, P * L_F + m * B + B
            comp["token_linear"] = nl * b * Tp * row
            comp["attn"] = nl * b * Tp * Lk * pair
        if L_F:
            comp["fam_linear"] = use["fam_linear"] = nl * b * L_F * ((n_full + 1) * qkv_row + n_full * finish_row)
            comp["scan_attn"] = use["scan_attn"] = nl * b * n_full * L_F * (L_F + B) * pair
        if L_F and path == "wave":  # [F; X] of every block through each layer, plus the final F's keys
            comp["fam_linear"] = nl * b * (n_blk * L_F * row + L_F * qkv_row)
            Lk = (P - 1) * L_F + m * B + L_F + B
            comp["attn"] = nl * b * n_blk * (L_F + B) * Lk * pair
            comp["scan_attn"] = 0
    else:  # reference: per block and layer, [F; X] through the layer, naive (dense) attention
        comp["token_linear"] = use["token_linear"]
        comp["fam_linear"] = use["fam_linear"] = nl * b * n_blk * L_F * row
        comp_pairs, fam_pairs = 0, 0
        for blk in range(n_blk):
            nb = min(B, T - blk * B)
            n_older = min(blk, P - 1) * L_F if L_F else 0
            if cfg.attention == "full":
                n_mem = blk * B
            else:
                n_mem = min(blk, m) * B
            comp_pairs += (L_F + nb) * (n_older + n_mem + L_F + nb)
            fam_pairs += L_F * (L_F + nb)
        comp["attn"] = nl * b * comp_pairs * pair
        use["attn"] += nl * b * fam_pairs * pair
    # not in the ceiling's shapes; the parallel paths compute the padding rows of a partial block too
    use["recurrent"] = recurrent_flops(cfg, b, T)
    comp["recurrent"] = recurrent_flops(cfg, b, T, None if path == "reference" else n_blk * B)
    comp["total"] = sum(comp.values())
    use["total"] = sum(use.values())
    return {"computed": comp, "useful": use}


# ----------------------------------------------------------------------------------------------
# matmul FLOP/s


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_matmul(
    m: int, k: int, n: int, reps: int, batch: int = 1, device: str = "cpu", dtype: str = "float32"
) -> list[float]:
    """FLOP/s of ``[batch, m, k] @ [batch, k, n]`` (fp32, or ``dtype``), one value per repeat (after a warm-up)."""
    g = torch.Generator().manual_seed(0)
    shape_a, shape_b = ((batch, m, k), (batch, k, n)) if batch > 1 else ((m, k), (k, n))
    dt_ = getattr(torch, dtype)
    a = torch.randn(*shape_a, generator=g).to(device, dt_)
    b = torch.randn(*shape_b, generator=g).to(device, dt_)
    out = torch.empty(*shape_a[:-1], n, device=device, dtype=dt_)
    torch.matmul(a, b, out=out)
    flops = 2.0 * batch * m * k * n
    scale = 1e3 if device.startswith("cuda") else 1.0  # a GPU needs far more work per timing
    inner = max(1, int(2e8 * scale // flops))  # at least ~0.2 GFLOP per timing for tiny shapes
    rates = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b, out=out)
        _sync(device)
        rates.append(flops * inner / (time.perf_counter() - t0))
    return rates


def model_matmul_shapes(cfg: ModelConfig, batch: int, seq_len: int) -> list[tuple[str, int, int, int, int]]:
    """(name, batch, m, k, n) of the matmuls the model spends its FLOPs in."""
    d, D, H, B = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.block_size
    rows = batch * seq_len
    n_blk = -(-seq_len // B)
    Lk = cfg.fam_prev_blocks * cfg.fam_len + cfg.mem_segment * B + B
    shapes = [
        ("qkv", 1, rows, d, (cfg.n_heads + 2 * cfg.kv_heads) * D),
        ("out_proj", 1, rows, d, d),
        ("ff_in", 1, rows, d, cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)),
        ("ff_out", 1, rows, cfg.ff_dim, d),
        ("lm_head", 1, rows, d, cfg.vocab_size),
        ("block_attn_scores", batch * H * n_blk, B, D, Lk),
        ("block_attn_values", batch * H * n_blk, B, Lk, D),
        ("fam_scan_scores", batch * H, cfg.fam_len, D, cfg.fam_len + B),
        ("fam_scan_values", batch * H, cfg.fam_len, cfg.fam_len + B, D),
        ("fam_scan_qkv", 1, batch * cfg.fam_len, d, (cfg.n_heads + 2 * cfg.kv_heads) * D),
        ("fam_scan_out_proj", 1, batch * cfg.fam_len, d, d),
        ("fam_scan_ff_in", 1, batch * cfg.fam_len, d, cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)),
        ("fam_scan_ff_out", 1, batch * cfg.fam_len, cfg.ff_dim, d),
    ]
    return [s for s in shapes if s[2] > 0 and s[4] > 0]


def _component_shapes(cfg: ModelConfig, impl: str) -> dict[str, list[tuple[str, float]]]:
    """FLOP component of :func:`forward_flops` -> the measured matmul shapes that stand for it, each
    with its share of the component's FLOPs."""
    d = cfg.d_model
    qkv_row, _ = _linear_row_flops(cfg)
    ff_in = cfg.ff_dim * (2 if cfg.ff == "swiglu" else 1)
    linear = [("qkv", qkv_row), ("out_proj", 2 * d * d), ("ff_in", 2 * d * ff_in), ("ff_out", 2 * cfg.ff_dim * d)]
    scan = [("fam_scan_" + name, w) for name, w in linear]
    scan_attn = [("fam_scan_scores", 1.0), ("fam_scan_values", 1.0)]
    return {
        "token_linear": linear,
        "head": [("lm_head", 1.0)],
        "attn": [("block_attn_scores", 1.0), ("block_attn_values", 1.0)],
        # the fast path runs FAM rows as batch x L_F-row matmuls; the reference loop as [F; X] rows
        "fam_linear": linear if flop_path(cfg, impl) in ("reference", "wave") else scan,
        "scan_attn": scan_attn,
        "init_linear": scan,
        "init_attn": scan_attn,
    }


def matmul_ceiling_s(
    cfg: ModelConfig, impl: str, forward_computed: dict[str, int], gflops: dict[str, float]
) -> float | None:
    """The shortest training step (3 x forward FLOPs) the model's own matmul shapes allow: seconds if
    every FLOP component ran at the FLOP/s measured for its shapes (``gflops``: shape name -> GFLOP/s)
    and softmax, norms, RoPE, elementwise work and memory traffic took no time. Forward shapes stand
    in for the backward's. None if a needed shape was not measured."""
    seconds = 0.0
    for comp, shapes in _component_shapes(cfg, impl).items():
        flops = forward_computed.get(comp, 0)
        if not flops:
            continue
        if any(name not in gflops for name, _ in shapes):
            return None
        total_w = sum(w for _, w in shapes)
        seconds += 3 * flops * sum(w / total_w / (gflops[name] * 1e9) for name, w in shapes)
    return seconds
