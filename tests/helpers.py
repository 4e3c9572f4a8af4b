"""Shared helpers for the model tests: tiny configs and models with weights large enough that every
attention path measurably changes the output (GPT-2 init at this size makes logits nearly flat)."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from famlab.bench.workers import TINY_TRIAL
from famlab.config import ModelConfig
from famlab.model import FamLM
from famlab.model.state import FamState, state_from_dict, state_to_dict

VARIANTS = ("full", "bswa", "txl", "fam")

# run-config overrides for a training run of a few seconds (sweep and analysis tests): the tiny trial
# famlab.bench.workers times, one definition
TINY = TINY_TRIAL


def tiny_cfg(**changes) -> ModelConfig:
    base = dict(
        vocab_size=41,
        d_model=32,
        n_layers=2,
        n_heads=4,
        block_size=8,
        mem_segment=1,
        fam_len=3,
        random_pos_offset=False,
        rsp_prob=0.0,
    )
    base.update(changes)
    return ModelConfig(**base)


def make_model(cfg: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> FamLM:
    torch.manual_seed(seed)
    model = FamLM(cfg).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                std = 0.5 if ("emb" in name or "fam_" in name) else p.shape[-1] ** -0.5
                p.normal_(0.0, std)
    return model.eval()


def tokens(cfg: ModelConfig, batch: int, T: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, T), generator=g)


def stream(model: FamLM, toks: torch.Tensor, chunks: list[int], grad: bool = False) -> torch.Tensor:
    """Logits of ``toks`` fed through ``model.step`` in chunks of the given sizes (cycled)."""
    state = model.init_state(toks.shape[0])
    outs, start, i = [], 0, 0
    while start < toks.shape[1]:
        n = chunks[i % len(chunks)]
        fn = model.step_with_grad if grad else model.step
        logits, state = fn(toks[:, start : start + n], state)
        outs.append(logits)
        start += n
        i += 1
    return torch.cat(outs, 1)


def param_grads(model: FamLM, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of a fixed random projection of the logits with respect to every parameter."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(logits.shape, generator=g, dtype=logits.dtype)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad((logits * w).sum(), list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if gr is None else gr) for (n, p), gr in zip(params.items(), grads)}


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5, what: str = "") -> None:
    """max |a - b| <= tol * max(1, max |b|): a tight fp32 tolerance relative to the values' scale."""
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} != {tuple(b.shape)}"
    scale = b.abs().max().clamp_min(1.0)
    err = (a - b).abs().max()
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} (scale {scale:.3g})"


class StreamingOracle(nn.Module):
    """A stand-in model for the scoring logic of ``evaluate``: it streams like ``FamLM.step`` and at
    each token puts all its logit mass on ``answer(seen)``, the next token it would say given every
    token it has read (``None``: uniform logits)."""

    def __init__(self, vocab_size: int, cfg: ModelConfig | None = None):
        super().__init__()
        self.vocab_size = vocab_size
        self.cfg = cfg or ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2)

    def answer(self, seen: list[int]) -> int | None:
        raise NotImplementedError

    class State:
        def __init__(self, b):
            self.pos, self.seen = 0, [[] for _ in range(b)]

    def init_state(self, b, device=None):
        return self.State(b)

    def step(self, tokens, state):
        b, t = tokens.shape
        logits = torch.zeros(b, t, self.vocab_size)
        state.pos += t
        for r in range(b):
            for i in range(t):
                state.seen[r].append(int(tokens[r, i]))
                token = self.answer(state.seen[r])
                if token is not None:
                    logits[r, i, token] = 1.0
        return logits, state


def passkey_digit_to_say(text: str, wrong_last: bool = False) -> int | None:
    """The next key digit a perfect reader of the PassKey ``text`` read so far would say (the last
    one off by one if ``wrong_last``), or None outside the answer."""
    found = re.search(r"The pass key is (\d+)\.", text)
    said = text.rsplit("The pass key is ", 1)[-1]
    if not (found and found.group(1).startswith(said) and len(said) < len(found.group(1))):
        return None
    digit = int(found.group(1)[len(said)])
    return (digit + 1) % 10 if wrong_last and len(said) == len(found.group(1)) - 1 else digit


def assert_causal(model: FamLM, impl: str) -> None:
    """Changing one token (in the first block, at block edges, the last token of a partial block) changes
    no earlier logit and does change its own."""
    B = model.cfg.block_size
    T = 4 * B + 5
    toks = tokens(model.cfg, 1, T)
    base = model(toks, impl=impl)
    for j in [0, 5, B - 1, B, 2 * B + 3, T - 1]:
        changed = toks.clone()
        changed[0, j] = (changed[0, j] + 1) % model.cfg.vocab_size
        out = model(changed, impl=impl)
        assert torch.equal(out[:, :j], base[:, :j]), f"token {j} changed an earlier logit"
        assert not torch.allclose(out[:, j], base[:, j]), f"token {j} did not change its own logit"


# The chunk plans the streaming tests feed ``step``: single tokens, chunks shorter and longer than a block,
# and an uneven cycle whose chunks start and end at every offset within a block.
STREAM_CHUNKS = ([1], [5], [17], [3, 11, 2])


# The switches every kind's random-switch test draws, after the kind's own (the order each test had them in).
SHARED_SWITCHES = dict(
    n_kv_heads=st.sampled_from([None, 1, 2]),
    ff=st.sampled_from(["gelu", "swiglu"]),
    norm=st.sampled_from(["layernorm", "rmsnorm"]),
    tie_embeddings=st.booleans(),
)


def random_switch_test(own_switches: dict):
    """The decorators of a kind's random-switch test: 12 hypothesis examples of ``sw`` (the kind's
    ``own_switches``, then SHARED_SWITCHES), a length ``T`` in 1..30, a chunk size ``chunk`` in 1..9 and a
    ``seed`` in 0..3; no deadline (fp64 reference loops are slow on a busy machine)."""
    switches = st.fixed_dictionaries({**own_switches, **SHARED_SWITCHES})
    run = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    draw = given(sw=switches, T=st.integers(1, 30), chunk=st.integers(1, 9), seed=st.integers(0, 3))
    return lambda test: run(draw(test))


def assert_paths_agree(
    model: FamLM, toks: torch.Tensor, *, tol: float, impl: str = "fast", chunks: list[int] | None = None, what=""
) -> dict[str, torch.Tensor]:
    """The ``impl`` path equals the reference loop in logits and in every parameter's gradient, and (with
    ``chunks``) streaming ``toks`` in those chunks equals the ``impl`` path. Returns the reference gradients,
    for the caller's check that they are not all zero (what must be nonzero differs per kind)."""
    out, ref = model(toks, impl=impl), model(toks, impl="reference")
    assert_close(out, ref, tol=tol, what=f"{impl} vs reference {what}")
    g_out, g_ref = param_grads(model, out), param_grads(model, ref)
    for name in g_ref:
        assert_close(g_out[name], g_ref[name], tol=tol, what=f"grad {name} {what}")
    if chunks is not None:
        assert_close(stream(model, toks, chunks), out, tol=tol, what=f"stream vs {impl} {what}")
    return g_ref


def assert_streaming_matches(model: FamLM, chunks: list[int], *, tol: float) -> None:
    """Streaming 6 blocks and a partial one (batch 2) in ``chunks`` equals the parallel forward."""
    toks = tokens(model.cfg, 2, 6 * model.cfg.block_size + 5)
    assert_close(stream(model, toks, chunks), model(toks), tol=tol, what=f"chunks {chunks}")


def assert_state_size_constant(model: FamLM, check_state: Callable[[FamState], None] | None = None) -> None:
    """Streaming 200 tokens in chunks of 5 (batch 1), the state's element count is the same at every block
    edge from token 60 on; ``check_state`` is called on the state at each of those edges."""
    B = model.cfg.block_size
    state, sizes = model.init_state(1), []
    for i in range(40):
        _, state = model.step(tokens(model.cfg, 1, 5, seed=i), state)
        if i > 10 and state.pos % B == 0:
            if check_state is not None:
                check_state(state)
            sizes.append(sum(t.numel() for ls in state.layers for t in vars(ls).values() if t is not None))
    assert state.pos == 200 and len(sizes) > 1 and len(set(sizes)) == 1, sizes


def assert_state_continues(
    model: FamLM,
    *,
    tol: float,
    check_prefill: Callable[[FamState], None] | None = None,
    through_saved_state: bool = True,
) -> None:
    """A parallel forward's state continues exactly (7 blocks and a partial one, batch 2, against one long
    forward): mid-block with ``step`` (through ``state_to_dict``/``state_from_dict`` if ``through_saved_state``;
    ``check_prefill`` is called on that mid-block state first), and at a block edge with another parallel
    forward, in logits and in gradients through the undetached state."""
    B = model.cfg.block_size
    toks = tokens(model.cfg, 2, 7 * B + 3)
    whole = model(toks)
    a = 3 * B + 2
    first, state = model(toks[:, :a], return_state=True)
    if check_prefill is not None:
        check_prefill(state)
    if through_saved_state:
        state = state_from_dict(state_to_dict(state))
    rest, _ = model.step(toks[:, a:], state)
    assert_close(torch.cat([first, rest], 1), whole, tol=tol, what="parallel + step")
    a = 3 * B
    first, state = model(toks[:, :a], return_state=True)
    both = torch.cat([first, model(toks[:, a:], state=state)], 1)
    assert_close(both, whole, tol=tol, what="parallel + parallel")
    g_both, g_whole = param_grads(model, both), param_grads(model, whole)
    for name in g_whole:
        assert_close(g_both[name], g_whole[name], tol=tol, what=f"grad {name}")


def two_training_calls(out_dir, *settings: str):
    """A tiny-preset training module with ``settings`` (TINY's sizes, ``out_dir``) makes two training calls on
    one batch, its model's forward watched: (module, batch, [(start state, final state or None), ...] per call)."""
    from famlab.config import load_run_config
    from famlab.data import build_datamodule
    from famlab.train import FamLightningModule

    cfg = load_run_config("tiny", [*(f"{k}={v}" for k, v in TINY.items()), f"out_dir={out_dir}", *settings])
    module = FamLightningModule(cfg).train()
    dm = build_datamodule(cfg.data, vocab_size=cfg.model.vocab_size, block_size=cfg.model.block_size, seed=0)
    batch = dm.train_batch(0)
    seen = []
    forward = module.model.forward

    def spy(tokens, **kw):
        out = forward(tokens, **kw)
        seen.append((kw.get("state"), out[1] if kw.get("return_state") else None))
        return out

    module.model.forward = spy
    module.train_loss(batch)
    module.train_loss(batch)
    return module, batch, seen
