"""PassKey retrieval, the paper's long-context probe, at byte level, in a Hugging Face tokenizer's
tokens (``data.tokenizer``: a folder with tokenizer files, or ``init_from`` for the pretrained model's
own; see :class:`Pieces` for how the pieces are tokenized), or as abstract symbols
(``data.tokenizer=symbols``, :class:`Symbols`: a 10-token prompt overhead instead of 100 bytes).
Every length below is in tokens (bytes at byte level); the answer is the tokens of the key digits as
that tokenizer writes them after the question.

An example (prompt + answer) is::

    [instruction] filler ... The pass key is 7143. Remember it. 7143 is the pass key. filler ...
    \\nWhat is the pass key? The pass key is 7143

* Instruction (``passkey_instruction``, default on): "There is an important info hidden inside a
  lot of irrelevant text. Find it and memorize it. I will quiz you about the important information
  there." (as in the landmark-attention / TransformerFAM prompts), then a newline.
* Filler: "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
  again. " cycled and cut to the exact byte count that makes the example ``length`` bytes long.
* The key sentence is inserted at the filler's sentence boundary nearest to ``depth * filler``
  (depth 0: right after the instruction; 1: at the last boundary before the question).
* The key has ``passkey_key_digits`` digits, the first one non-zero; the answer is the digits
  only (the space belongs to the prompt). Loss weight 1 on the answer digits, 0 elsewhere.

**Training.** Each row draws its example length uniformly in
``[passkey_train_blocks_min, passkey_train_blocks_max] * block_size`` bytes, capped at
``seq_len + 1`` (max 0: up to ``seq_len + 1``, i.e. a full row; a min above the cap is lowered to
it, so an early, short curriculum stage still works), and its depth uniformly in [0, 1]. Lengths
are in blocks because that is the unit of memory reach (about n_layers * (m+1) * B). Examples
shorter than the row are right-padded with byte 0 (weight 0), so each example starts at position 0
as in evaluation. With ``passkey_pack`` a row instead holds consecutive examples (the last one cut
to what is left of the row; a tail shorter than the fixed prompt is padding), each scored.

**Evaluation**: :mod:`famlab.eval.passkey` (accuracy per length and key depth, streamed).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from famlab.config import DataConfig, config_error
from famlab.config.trainable import (
    FILLER,
    INSTRUCTION,
    KEY_SENTENCE,
    QUESTION,
    check_passkey_fits,
    check_passkey_vocab,
)
from famlab.data.base import Task

PAD = 0  # right padding byte after an example (weight 0)


# data.tokenizer=symbols: PassKey as abstract symbols, no text. Id 0 pads, ids 1-10 are the digits
# 0-9, then the key and question markers, then filler symbols (every other id the model has).
SYMBOL_DIGIT0, SYMBOL_KEY, SYMBOL_QUESTION, SYMBOL_FILLER0 = 1, 11, 12, 13
SYMBOL_PERIOD = 251  # the filler: one fixed pseudo-random sequence of filler symbols, cycled


class Symbols:
    """PassKey as symbols (``data.tokenizer=symbols``): ``filler KEY d1..dk filler QUESTION`` then the
    answer ``d1..dk``. The fixed part is 2k+2 tokens (10 for 4 digits, against 100 bytes of text),
    so short sequences still hold long filler; the key can sit at any filler position."""

    def __init__(self, vocab_size: int):
        rng = np.random.default_rng(0)
        self.filler = rng.integers(SYMBOL_FILLER0, vocab_size, size=SYMBOL_PERIOD).astype(np.int64)

    def digits(self, key: str) -> np.ndarray:
        return np.asarray([SYMBOL_DIGIT0 + int(c) for c in key], dtype=np.int64)


class Pieces:
    """The pieces of PassKey examples as token ids, for one tokenizer (``None``: bytes; a
    :class:`Symbols`: abstract symbols).

    Bytes: exactly the texts above. An HF tokenizer (``data.tokenizer``): each piece is tokenized on
    its own, with the spacing a BPE vocabulary expects (sentences start with a space; the instruction
    has no trailing newline), and the question is tokenized together with the answer so the answer's
    tokens are the ones the tokenizer produces in context (SmolLM2: "is" + "Ġ" in the prompt, one token
    per digit in the answer). Lengths are in tokens either way.
    """

    def __init__(self, tokenizer: Any = None, instruction: bool = True):
        self.tokenizer = tokenizer
        if isinstance(tokenizer, Symbols):
            self.pad = PAD
            self.head = np.zeros(0, dtype=np.int64)  # no instruction: the task is the format itself
            self.period = tokenizer.filler
            self.starts = np.arange(len(self.period))  # every filler position is a boundary
            return
        if tokenizer is None:
            self.pad = PAD
            self.head = encode(INSTRUCTION) if instruction else encode("")
            sentences = [encode(s) for s in _byte_sentences()]
        else:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            self.pad = int(pad if pad is not None else 0)
            self.head = self._ids(INSTRUCTION.rstrip("\n")) if instruction else self._ids("")
            sentences = [self._ids(" " + s) for s in _byte_sentences(strip=True)]
        # one period of filler (its sentences in order) and the sentence starts inside it
        self.period = np.concatenate(sentences)
        self.starts = np.cumsum([0] + [len(s) for s in sentences[:-1]])

    def _ids(self, text: str) -> np.ndarray:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return np.asarray(ids, dtype=np.int64)

    def key_parts(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(key sentence, question, answer) for ``key``."""
        if self.tokenizer is None:
            return encode(KEY_SENTENCE.format(key=key)), encode(QUESTION), encode(key)
        if isinstance(self.tokenizer, Symbols):
            digits = self.tokenizer.digits(key)
            return np.concatenate([[SYMBOL_KEY], digits]), np.asarray([SYMBOL_QUESTION]), digits
        sentence = self._ids(" " + KEY_SENTENCE.format(key=key).strip())
        tail = QUESTION + key
        enc = self.tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        ends = np.asarray([e for _, e in enc["offset_mapping"]])
        first = int(np.argmax(ends > len(QUESTION)))  # the first token that covers a key character
        return sentence, ids[:first], ids[first:]

    def boundaries(self, up_to: int) -> np.ndarray:
        """The filler's sentence boundaries in [0, up_to] (0 is always one)."""
        reps = up_to // len(self.period) + 1
        cands = (self.starts[None, :] + len(self.period) * np.arange(reps)[:, None]).ravel()
        return np.sort(cands[cands <= up_to])

    def fixed_len(self, key: str) -> int:
        """Tokens of an example with ``key`` that are not filler."""
        return len(self.head) + sum(len(p) for p in self.key_parts(key))

    def example(self, key: str, length: int, depth: float) -> tuple[np.ndarray, int, float]:
        """(token ids of the whole example, exactly ``length`` long; answer token count; actual depth)."""
        sentence, question, answer = self.key_parts(key)
        fixed = len(self.head) + len(sentence) + len(question) + len(answer)
        filler_len = length - fixed
        if filler_len < 0:
            raise ValueError(
                f"a passkey example of {length} tokens is too short: it needs at least {fixed} "
                f"(the instruction, key sentence, question and answer of key {key})"
            )
        reps = filler_len // len(self.period) + 1
        filler = np.tile(self.period, reps)[:filler_len]
        b = _boundary(depth, filler_len, self.starts, len(self.period))
        ids = np.concatenate([self.head, filler[:b], sentence, filler[b:], question, answer])
        return ids, len(answer), (b / filler_len if filler_len else 0.0)


def _byte_sentences(strip: bool = False) -> list[str]:
    """FILLER cut after each ". " (each sentence keeps its trailing space unless ``strip``)."""
    parts = [s + ". " for s in FILLER.strip().rstrip(".").split(". ")]
    return [p.strip() for p in parts] if strip else parts


def _boundary(depth: float, filler_len: int, starts: np.ndarray, period: int) -> int:
    """The sentence boundary (<= filler_len) nearest to depth * filler_len (ties: the earlier one)."""
    x = depth * filler_len
    q = int(x // period)
    cands = np.concatenate([starts + p * period for p in (q - 1, q, q + 1)])
    cands = cands[(cands >= 0) & (cands <= filler_len)]
    if not len(cands):
        return 0
    cands = np.sort(cands)
    return int(cands[np.argmin(np.abs(cands - x))])


@functools.cache
def byte_pieces(instruction: bool = True) -> Pieces:
    return Pieces(None, instruction)


@functools.cache
def symbol_pieces(vocab_size: int) -> Pieces:
    return Pieces(Symbols(vocab_size))


def fixed_len(digits: int, instruction: bool) -> int:
    """Bytes of an example that are not filler: instruction, key sentence, question, answer."""
    return byte_pieces(instruction).fixed_len("0" * digits)


def make_example(key: str, length: int, depth: float, instruction: bool = True) -> tuple[str, float]:
    """The byte example (prompt + answer) of exactly ``length`` bytes, and its actual depth in [0, 1]."""
    ids, _, actual = byte_pieces(instruction).example(key, length, depth)
    return ids.astype(np.uint8).tobytes().decode("ascii"), actual


def random_key(rng: np.random.Generator, digits: int) -> str:
    first = str(rng.integers(1, 10))
    return first + "".join(str(d) for d in rng.integers(0, 10, size=digits - 1))


def fitting_key(rng: np.random.Generator, pieces: Pieces, digits: int, room: int, tries: int) -> str | None:
    """A random key whose example fits in ``room`` tokens, in at most ``tries`` draws (None if none did).
    A tokenizer that merges digits can give a key more tokens than "99..9", from which the minimum
    length is computed; byte, symbol and digit-splitting tokenizers fit every key at the first draw."""
    for _ in range(tries):
        key = random_key(rng, digits)
        if pieces.fixed_len(key) <= room:
            return key
    return None


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)


def pieces_for(cfg: DataConfig, vocab_size: int) -> Pieces:
    """The Pieces of ``cfg.tokenizer`` (checked against the model's ``vocab_size``)."""
    check_passkey_vocab(cfg, vocab_size)
    if cfg.tokenizer == "bytes":
        return byte_pieces(cfg.passkey_instruction)
    if cfg.tokenizer == "symbols":
        return symbol_pieces(vocab_size)
    return Pieces(fitting_tokenizer(cfg, vocab_size), cfg.passkey_instruction)


def fitting_tokenizer(cfg: DataConfig, vocab_size: int) -> Any:
    """The Hugging Face tokenizer ``cfg.tokenizer``, refused in one line when its ids outnumber ``vocab_size``."""
    tok = load_tokenizer(cfg.tokenizer)
    if len(tok) > vocab_size:
        raise config_error(
            "DataConfig",
            "tokenizer",
            cfg.tokenizer,
            f"a tokenizer whose {len(tok)} ids fit the model's vocab_size={vocab_size}",
        )
    return tok


class PasskeyTask(Task):
    name = "passkey"
    code = 1

    def __init__(self, cfg: DataConfig, *, vocab_size: int, block_size: int):
        super().__init__(cfg, vocab_size=vocab_size, block_size=block_size)
        self.pieces = pieces_for(cfg, vocab_size)
        check_passkey_fits(cfg, self.pieces.fixed_len("9" * cfg.passkey_key_digits))

    def length_range(self, row_len: int) -> tuple[int, int]:
        cfg, B = self.cfg, self.block_size
        hi = min(cfg.passkey_train_blocks_max * B, row_len) if cfg.passkey_train_blocks_max else row_len
        lo = min(max(cfg.passkey_train_blocks_min * B, self.pieces.fixed_len("9" * cfg.passkey_key_digits)), hi)
        return lo, hi

    def train_depth(self, rng: np.random.Generator, key: str, length: int) -> float:
        """The key depth of a training example of ``length`` tokens (``data.passkey_train_depth``). ``uniform``
        draws one number, as before the key existed, so its data stream is unchanged."""
        mode = self.cfg.passkey_train_depth
        if mode == "mixture":
            mode = "first_block" if rng.random() < self.cfg.passkey_train_first_block_prob else "uniform"
        if mode == "uniform":
            return float(rng.random())
        # first_block: one of the filler's sentence boundaries where the whole key sentence still ends inside
        # the first block (after the instruction), uniformly; the first boundary if the prompt leaves none
        filler_len = length - self.pieces.fixed_len(key)
        if filler_len <= 0:
            return 0.0
        room = self.block_size - len(self.pieces.head) - len(self.pieces.key_parts(key)[0])
        bounds = self.pieces.boundaries(min(max(room, 0), filler_len))
        return float(bounds[int(rng.random() * len(bounds))]) / filler_len

    def episode(
        self, split: str, rng: np.random.Generator, length: int, windows: tuple[int, ...] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        tokens = np.full((cfg.batch_size, length), self.pieces.pad, dtype=np.int64)
        weights = np.zeros((cfg.batch_size, length), dtype=np.float32)
        lo, hi = self.length_range(length)
        need = self.pieces.fixed_len("9" * cfg.passkey_key_digits)
        for r in range(cfg.batch_size):
            pos = 0
            while length - pos >= need:  # one example, or (passkey_pack) as many as fit
                n = min(int(rng.integers(lo, hi + 1)), length - pos)
                # the first example of a row may draw again; a packed one that does not fit ends the row
                key = fitting_key(rng, self.pieces, cfg.passkey_key_digits, length - pos, tries=1 if pos else 100)
                if key is None:
                    if pos:
                        break
                    raise ValueError(
                        f"a passkey row of {length} tokens fits too few {cfg.passkey_key_digits}-digit keys with "
                        "this tokenizer (it merges digits): raise data.seq_len or lower data.passkey_key_digits"
                    )
                n = max(n, self.pieces.fixed_len(key))
                ids, answer_len, _ = self.pieces.example(key, n, self.train_depth(rng, key, n))
                tokens[r, pos : pos + n] = ids
                weights[r, pos + n - answer_len : pos + n] = 1.0
                pos += n
                if not cfg.passkey_pack:
                    break
        return tokens, weights


@functools.cache
def load_tokenizer(path: str) -> Any:
    """The HF tokenizer in folder ``path`` (a converted model folder has one), loaded once per process."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise config_error(
            "DataConfig", "tokenizer", path, "'bytes' (an HF tokenizer needs: pip install -e '.[hf]')"
        ) from e
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise config_error(
            "DataConfig",
            "tokenizer",
            path,
            f"'bytes' or a folder with HF tokenizer files ({' '.join(str(e).split())[:200]})",
        ) from None
