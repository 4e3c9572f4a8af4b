"""How the suite's samples become token ids, per tokenizer (``data.tokenizer``), and where their haystack
comes from.

* ``bytes``: the text templates as ASCII bytes; the haystack is the held-out (test split) documents of
  the text corpus (:func:`famlab.data.text.load_corpus`, fetched into ``data.cache_dir`` like the text
  task), read from a random offset; needles go in after a whitespace byte (a word boundary).
* an HF tokenizer (a folder): the same templates, each piece tokenized on its own; the haystack is the
  same documents' text, tokenized once; needles go in at any token boundary.
* ``symbols``: compact templates (``@key:value.`` needles, ``?key:`` queries), one symbol per character:
  the digits are PassKey's digit symbols, ``@`` and ``?`` its key and question markers, and every other
  character one fixed symbol above them, an uppercase letter its lowercase one (the scores are
  case-insensitive; so 45 symbols suffice and PassKey's 64-symbol models run the suite); the haystack is
  PassKey's symbol filler, cycled from a random offset; needles go in anywhere.

Lengths are in the codec's tokens. ``decode`` turns predicted tokens back into text for scoring.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

from famlab.config import DataConfig, config_error
from famlab.data.passkey import (
    SYMBOL_DIGIT0,
    SYMBOL_FILLER0,
    SYMBOL_KEY,
    SYMBOL_QUESTION,
    fitting_tokenizer,
    load_tokenizer,
    pieces_for,
    symbol_pieces,
)
from famlab.data.text import load_corpus

# RULER's templates, shortened so that every task fits in a tiny model's training length
TEXT_TEMPLATES = {
    "head": "Some special magic {noun} are hidden within the following text. Memorize them. "
    "I will quiz you about them afterwards.\n",
    "needle": " One of the special magic {noun} for {key} is: {value}. ",
    "query": "\nWhat is the special magic {noun} for {key}? Answer: ",
    "query_all": "\nWhat are all the special magic {noun} for {key}? Answer: ",
    "query_many": "\nWhat are the special magic {noun} for {keys}? Answer: ",
    "vt_head": "Memorize and track the chain(s) of variable assignment hidden in the following text.\n",
    "vt_value": " VAR {name} = {value}. ",
    "vt_link": " VAR {name} = VAR {prev}. ",
    "vt_query": "\nFind all variables that are assigned the value {value} in the text above. Answer: ",
    "cwe_head": "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n",
    "cwe_entry": " {i}. {word}",
    "cwe_query": "\nWhat are the {k} most common words in the above list? Answer: ",
    "fwe_head": "Read the following coded text and track the frequency of each coded word. "
    "Find the {k} most frequently appeared coded words.\n",
    "fwe_entry": " {word}",
    "fwe_query": "\nWhat are the {k} most frequently appeared words in the above coded text? Answer: ",
    "sep": " ",
}
SYMBOL_TEMPLATES = {
    "head": "",
    "needle": "@{key}:{value}.",
    "query": "?{key}:",
    "query_all": "?{key}:",
    "query_many": "?{keys}:",
    "vt_head": "",
    "vt_value": "@{name}={value}.",
    "vt_link": "@{name}={prev}.",
    "vt_query": "?{value}:",
    "cwe_head": "",
    "cwe_entry": "{word} ",
    "cwe_query": "?{k}:",
    "fwe_head": "",
    "fwe_entry": "{word} ",
    "fwe_query": "?{k}:",
    "sep": " ",
}
HEADS = ("head", "vt_head", "cwe_head", "fwe_head")  # left out with data.passkey_instruction=false
# symbols: every character the templates and values use (uppercase read as lowercase), after the digits and markers
SYMBOL_CHARS = string.ascii_lowercase + " -:.=,"


@dataclass
class Codec:
    """Text <-> token ids for one tokenizer, its templates and its haystack source."""

    kind: str  # bytes | symbols | tokenizer
    templates: dict[str, str]
    tokenizer: Any = None
    haystack_ids: np.ndarray | None = None  # the haystack source (a long token array, read cyclically)
    word_starts: bool = False  # bytes: needles go in after whitespace only
    instruction: bool = True  # data.passkey_instruction: the tasks' instruction heads (text templates)
    passkey: Any = None  # the run's PassKey pieces (famlab.data.passkey.Pieces): the niah_passkey task's examples
    key_digits: int = 5  # data.passkey_key_digits: the niah_passkey task's key length

    def encode(self, text: str) -> np.ndarray:
        if self.kind == "bytes":
            return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64)
        if self.kind == "symbols":
            return np.asarray([symbol_of(c) for c in text], dtype=np.int64)
        return np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "bytes":
            return bytes(i % 256 for i in ids).decode("latin-1")
        if self.kind == "symbols":
            return "".join(char_of(i) for i in ids)
        return self.tokenizer.decode(ids)

    def fill(self, template: str, **fields: Any) -> np.ndarray:
        if template in HEADS and not self.instruction:
            return self.encode("")
        return self.encode(self.templates[template].format(**fields))

    def haystack(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` haystack tokens from a random offset (the source read cyclically)."""
        src = self.haystack_ids
        start = int(rng.integers(0, len(src)))
        reps = (start + n) // len(src) + 1
        return np.tile(src, reps)[start : start + n] if reps > 1 else src[start : start + n].copy()

    def insertion_points(self, hay: np.ndarray) -> np.ndarray:
        """The offsets in [0, len(hay)] where a needle may go in (0 and len(hay) always may)."""
        n = len(hay)
        if not self.word_starts:
            return np.arange(n + 1)
        after_space = np.flatnonzero(np.isin(hay[:-1], (32, 10))) + 1 if n else np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([[0, n], after_space]))


def symbol_of(c: str) -> int:
    if c.isdigit():
        return SYMBOL_DIGIT0 + int(c)
    if c == "@":
        return SYMBOL_KEY
    if c == "?":
        return SYMBOL_QUESTION
    return SYMBOL_FILLER0 + SYMBOL_CHARS.index(c.lower())


def char_of(i: int) -> str:
    if SYMBOL_DIGIT0 <= i < SYMBOL_DIGIT0 + 10:
        return str(i - SYMBOL_DIGIT0)
    if i == SYMBOL_KEY:
        return "@"
    if i == SYMBOL_QUESTION:
        return "?"
    j = i - SYMBOL_FILLER0
    return SYMBOL_CHARS[j] if 0 <= j < len(SYMBOL_CHARS) else "#"


@functools.cache
def _corpus_text(cache_dir: str, val_docs: int, test_docs: int) -> np.ndarray:
    docs = load_corpus(cache_dir, val_docs, test_docs)["test"]
    return np.concatenate([docs[n] for n in sorted(docs)]).astype(np.int64)


@functools.cache
def _tokenized_corpus(tokenizer_path: str, cache_dir: str, val_docs: int, test_docs: int) -> np.ndarray:
    text = _corpus_text(cache_dir, val_docs, test_docs).astype(np.uint8).tobytes().decode("utf-8", "replace")
    ids = load_tokenizer(tokenizer_path)(text, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def codec_for(cfg: DataConfig, vocab_size: int) -> Codec:
    """The codec of ``cfg.tokenizer`` for a model with ``vocab_size`` tokens (with the run's PassKey pieces)."""
    if cfg.tokenizer == "symbols":
        need = SYMBOL_FILLER0 + len(SYMBOL_CHARS)
        if vocab_size < need:
            raise config_error(
                "DataConfig", "tokenizer", cfg.tokenizer, f"a model with vocab_size >= {need} for the suite's symbols"
            )
        filler = symbol_pieces(vocab_size).period
        codec = Codec("symbols", SYMBOL_TEMPLATES, haystack_ids=filler)
    elif cfg.tokenizer == "bytes":
        if vocab_size < 256:
            raise config_error(
                "DataConfig", "tokenizer", "bytes", f"a model with vocab_size >= 256; it has {vocab_size}"
            )
        hay = _corpus_text(cfg.cache_dir, cfg.text_val_docs, cfg.text_test_docs)
        codec = Codec("bytes", TEXT_TEMPLATES, haystack_ids=hay, word_starts=True, instruction=cfg.passkey_instruction)
    else:
        tok = fitting_tokenizer(cfg, vocab_size)
        hay = _tokenized_corpus(cfg.tokenizer, cfg.cache_dir, cfg.text_val_docs, cfg.text_test_docs)
        codec = Codec("tokenizer", TEXT_TEMPLATES, tokenizer=tok, haystack_ids=hay, instruction=cfg.passkey_instruction)
    codec.passkey, codec.key_digits = pieces_for(cfg, vocab_size), cfg.passkey_key_digits
    return codec
