"""``niah_passkey``: famlab's own PassKey example (:mod:`famlab.data.passkey`) as a needle task of the suite,
so a PassKey-trained run shows its memory in the suite's heatmap next to RULER's keyed needles.

The sample is exactly what :meth:`famlab.data.passkey.Pieces.example` builds for the run's tokenizer (the
run's ``pieces_for(cfg, vocab_size)``): its instruction (``data.passkey_instruction``), its filler, a key of
``data.passkey_key_digits`` digits drawn as the PassKey evaluation draws it (:func:`~famlab.data.passkey.fitting_key`),
the key sentence at the filler's sentence boundary nearest to the requested depth (symbols: any position), the
question, and the key's tokens as the answer; exactly ``length`` tokens. The haystack is PassKey's filler, not
the codec's (held-out text or shifted filler): that is the format the task trains on.

Every tokenizer famlab has (bytes, symbols, an HF tokenizer) builds PassKey examples, so the task is in the
``niah`` suite (and ``ruler``, ``all``) of every run, whatever its data task: the metric names a sweep may
name stay independent of the task, and a run not trained on PassKey simply shows how it transfers to it.
"""

from __future__ import annotations

import numpy as np

from famlab.data.passkey import fitting_key
from famlab.eval.suite.codec import Codec
from famlab.eval.suite.sample import Sample, too_short

TASK = "niah_passkey"


def niah_passkey(codec: Codec, rng: np.random.Generator, length: int, depth: float) -> Sample:
    """A PassKey example of ``length`` tokens with its key sentence nearest to ``depth``; refs: the key."""
    pieces, digits = codec.passkey, codec.key_digits
    need = pieces.fixed_len("9" * digits)
    if length < need:
        raise too_short(TASK, length, need)
    key = fitting_key(rng, pieces, digits, length, tries=100)
    if key is None:  # a digit-merging tokenizer gave every drawn key more tokens than "99..9"
        raise too_short(TASK, length, need + digits)
    ids, answer_len, actual = pieces.example(key, length, depth)
    hay_len = length - pieces.fixed_len(key)
    offset = int(round(actual * hay_len))  # the filler tokens before the key sentence
    start = len(pieces.head) + offset
    return Sample(
        ids, answer_len, [key], depth=actual, needle_at=start, needles=[start], hay_len=hay_len, offset=offset
    )
