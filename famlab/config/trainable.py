"""Whether a run config can be trained, checked before anything is built: the checks that need the model's
settings and the task together (a passkey prompt that fits ``seq_len``, recall's tokens that fit the
vocabulary), bounds on sizes (a memory estimate against this machine's RAM), all without torch.

:func:`check_trainable` is what ``famlab train`` runs (in :func:`famlab.train.train`, before the model, the
data or the run directory exist) and what ``famlab sweep`` runs on every trial's config before its first
trial starts (:mod:`famlab.sweep.validate`), so a sweep never launches a trial ``famlab train`` would refuse.
The tasks (:mod:`famlab.data`) call the same per-task rules when they are built. Every error is one line
naming the dotted key, its value and what is allowed (:class:`ConfigError`).
"""

from __future__ import annotations

import glob
import os
from typing import Any

from famlab.config.data import DataConfig
from famlab.config.errors import ConfigError, config_error
from famlab.config.model import ModelConfig

# The PassKey prompt's fixed texts (famlab.data.passkey builds its examples from them).
INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is "
SYMBOL_TOKENS = 14  # data.tokenizer=symbols: pad, 10 digits, key and question markers, then filler symbols
OWNER = "DataConfig"


def passkey_prompt_len(data: DataConfig) -> int | None:
    """Tokens of a passkey example that are not filler (instruction, key sentence, question, answer of the
    longest key), for the ``bytes`` and ``symbols`` tokenizers; None for an HF tokenizer (the task counts
    them with the tokenizer when it is built)."""
    digits = data.passkey_key_digits
    if data.tokenizer == "symbols":
        return 2 * digits + 2  # key marker + digits, question marker, answer digits
    if data.tokenizer == "bytes":
        head = len(INSTRUCTION) if data.passkey_instruction else 0
        return head + len(KEY_SENTENCE.format(key="9" * digits)) + len(QUESTION) + digits
    return None


def check_passkey_vocab(data: DataConfig, vocab_size: int) -> None:
    """The model's vocabulary holds the passkey tokens of ``bytes`` and ``symbols``."""
    if data.tokenizer == "bytes" and vocab_size < 128:
        raise ValueError(f"vocab_size={vocab_size} is not allowed for task='passkey': expected >= 128 (ASCII bytes)")
    if data.tokenizer == "symbols" and vocab_size <= SYMBOL_TOKENS:
        raise config_error(
            OWNER,
            "tokenizer",
            data.tokenizer,
            f"a model with vocab_size > {SYMBOL_TOKENS} (pad, 10 digits, 2 markers, filler symbols); "
            f"it has {vocab_size}",
        )


def check_passkey_fits(data: DataConfig, need: int) -> None:
    """Every training length holds a passkey prompt of ``need`` tokens (answer included)."""
    if data.min_seq_len + 1 < need:
        key = data.min_seq_len_key
        raise config_error(
            OWNER,
            key,
            getattr(data, key),
            f"every seq_len >= {need - 1} for a passkey prompt (passkey_instruction="
            f"{data.passkey_instruction}, passkey_key_digits={data.passkey_key_digits}); "
            "set passkey_instruction=false for shorter prompts",
        )


def check_recall_fits(data: DataConfig, vocab_size: int) -> None:
    """Recall's noise, key and value tokens fit the vocabulary, its pairs and queries every training length."""
    used = 1 + data.recall_noise_vocab + data.recall_key_vocab + data.recall_value_vocab
    if used > vocab_size:
        raise ValueError(
            f"DataConfig.recall_noise_vocab+recall_key_vocab+recall_value_vocab="
            f"{used - 1} is not allowed: expected at most vocab_size - 1 = {vocab_size - 1} (token 0 is padding)"
        )
    body = 2 * data.recall_num_pairs + 2 * data.num_queries
    if data.min_seq_len + 1 < body:
        key = data.min_seq_len_key
        raise ValueError(
            f"DataConfig.{key}={getattr(data, key)!r} is not allowed: expected every seq_len >= "
            f"{body - 1} for {data.recall_num_pairs} pairs and {data.num_queries} queries"
        )


def check_task(data: DataConfig, vocab_size: int) -> None:
    """The task's rules that need the model's vocabulary (the tasks run them when built, too)."""
    if data.task == "passkey":
        check_passkey_vocab(data, vocab_size)
        need = passkey_prompt_len(data)
        if need is not None:
            check_passkey_fits(data, need)
    elif data.task == "recall":
        check_recall_fits(data, vocab_size)


def linear_params(model: ModelConfig, n_in: int, n_out: int, bias: bool | None = None) -> int:
    """Parameters of ``nn.Linear(n_in, n_out)`` (with a bias if ``bias``; default: ``model.bias``)."""
    return n_in * n_out + (n_out if (model.bias if bias is None else bias) else 0)


def norm_params(model: ModelConfig) -> int:
    """Parameters of one norm (``famlab.model.ops.make_norm``): RMSNorm a weight, LayerNorm a weight and,
    with ``bias``, a bias."""
    d = model.d_model
    return d if model.norm == "rmsnorm" or not model.bias else 2 * d


def ff_params(model: ModelConfig) -> int:
    """Parameters of one feed-forward (``famlab.model.layer.FeedForward``)."""
    up = model.ff_dim * (2 if model.ff == "swiglu" else 1)
    return linear_params(model, model.d_model, up) + linear_params(model, model.ff_dim, model.d_model)


def layer_params(model: ModelConfig) -> int:
    """Parameters of one ``famlab.model.layer.Layer``: two norms, QKV and output projections, the
    feed-forward, SUM FAM's summary rows and Infini-attention's gates (a recurrent cell not counted)."""
    d, hd = model.d_model, model.head_dim
    own = 2 * norm_params(model) + linear_params(model, d, (model.n_heads + 2 * model.kv_heads) * hd)
    own += linear_params(model, d, d) + ff_params(model)
    if model.attention == "sum_fam":
        own += model.fam_len * d
    if model.attention == "infini":
        own += model.n_heads
    return own


def recurrent_cell_params(model: ModelConfig) -> int:
    """Parameters of one Block-Recurrent cell (``famlab.model.recurrent_cell.RecurrentCell``): initial state
    and state IDs, the projections, two norms, a feed-forward and two gates (``fixed``: a bias of d; ``lstm``:
    input and forget projections, with biases, from the gate's input)."""
    d, H, G, D, S = model.d_model, model.n_heads, model.kv_heads, model.head_dim, model.state_len
    cell = 2 * S * d + linear_params(model, d, H * D) + linear_params(model, d, d)
    cell += linear_params(model, d, (2 * H + 2 * G) * D) + linear_params(model, 2 * d, d)
    cell += 2 * norm_params(model) + ff_params(model)
    for gate_input in (2 * d, model.ff_dim):
        cell += 2 * linear_params(model, gate_input, d, bias=True) if model.brt_gate == "lstm" else d
    return cell


def parameter_count(model: ModelConfig) -> int:
    """The model's parameters, exactly as ``FamLM(model)`` has them: embedding, head if untied, final norm,
    layers, Block-Recurrent cells, FAM prompt/prefix, RMT's first memory (LoRA adapters not counted)."""
    d = model.d_model
    fam = model.effective_fam_len * d * (model.n_layers if model.fam_init == "prefix" else 1)
    head = 0 if model.tie_embeddings else model.vocab_size * d
    rmt = model.rmt_mem_tokens * d if model.attention == "rmt" else 0
    cells = len(model.recurrent_layers) * recurrent_cell_params(model)
    body = model.n_layers * layer_params(model) + cells + norm_params(model)
    return model.vocab_size * d + head + body + fam + rmt


def training_bytes(model: ModelConfig, data: DataConfig) -> int:
    """A lower bound on the memory one training step needs: weights and gradients (4 bytes each, optimizer
    state not counted), and for a batch at the longest training length (padded to whole blocks) the logits
    and, per layer, the hidden states and each block's attention mask over its keys (1 byte a cell)."""
    B, b = model.block_size, data.batch_size
    T = max([data.seq_len] + [p[1] for p in data.seq_len_schedule])
    n_blk = -(-T // B)
    Tp = n_blk * B
    keys = B + (T if model.attention == "full" else min(model.mem_segment, n_blk - 1) * B)
    keys += model.effective_fam_len * model.fam_prev_blocks
    activations = 4 * b * Tp * model.vocab_size + model.n_layers * b * Tp * (4 * model.d_model + keys)
    return 8 * parameter_count(model) + activations


def physical_memory() -> int | None:
    """This machine's RAM in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


GPU_ALLOWANCE = 192 * 2**30  # a run that may use a GPU: its activations may sit in up to this much GPU memory


def may_use_gpu(accelerator: str) -> bool:
    """Whether a run with ``train.accelerator`` may run on a GPU here (a CUDA or ROCm device node exists)."""
    if accelerator == "cpu":
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd") or accelerator != "auto"


def check_sizes(cfg: Any, memory: int | None = None) -> None:
    """The training step's memory estimate (:func:`training_bytes`) fits ``memory`` (default: this machine's
    RAM, plus :data:`GPU_ALLOWANCE` when the run may use a GPU); the error names the largest of the keys that
    drive the estimate and says the estimate."""
    if memory is None:
        memory = physical_memory()
        if memory is not None and may_use_gpu(cfg.train.accelerator):
            memory += GPU_ALLOWANCE
    need = training_bytes(cfg.model, cfg.data)
    if memory is None or need <= memory:
        return
    drivers = {
        "data.seq_len": cfg.data.seq_len,
        "model.block_size": cfg.model.block_size,
        "model.d_model": cfg.model.d_model,
        "model.vocab_size": cfg.model.vocab_size,
        "model.n_layers": cfg.model.n_layers,
        "data.batch_size": cfg.data.batch_size,
        "model.d_ff": cfg.model.d_ff or 0,
    }
    key, value = max(drivers.items(), key=lambda kv: kv[1])
    raise ConfigError(
        f"{key}={value!r} is not allowed: a training step needs at least {gib(need)} (estimate: "
        f"{parameter_count(cfg.model):,} parameters, batch {cfg.data.batch_size} x {cfg.data.seq_len} tokens), "
        f"more than the {gib(memory)} this machine has"
    )


def check_trainable(cfg: Any, memory: int | None = None) -> None:
    """Everything ``famlab train`` checks on a loaded :class:`~famlab.config.RunConfig` before it builds the
    model or the data: the task's rules (:func:`check_task`) and the sizes (:func:`check_sizes`). Raises
    :class:`ConfigError` with one line naming the dotted key. An HF tokenizer's prompt length and
    ``model.init_from`` are checked when the task and the model are built (they need their files)."""
    try:
        check_task(cfg.data, cfg.model.vocab_size)
    except ValueError as e:
        msg = " ".join(str(e).split())
        raise ConfigError("data." + msg[len(OWNER) + 1 :] if msg.startswith(OWNER + ".") else msg) from None
    check_sizes(cfg, memory)
