"""RULER's needle-in-a-haystack family: a needle "One of the special magic numbers for KEY is: VALUE."
in the haystack, then a question about KEY.

* ``niah_single_digits`` / ``_words`` / ``_uuid``: one needle, its value a 7-digit number, a noun or a
  uuid-like string.
* ``niah_multikey``: the needle and ``distractors`` (default 3) needles of other keys at random depths.
* ``niah_multivalue``: ``values`` (default 4) needles of the same key: the answer is all their values.
* ``niah_multiquery``: ``queries`` (default 4) needles of different keys, all of them asked.

The first needle sits at the requested depth, the others at random depths. The answer is the values
separated by the template's separator, in needle order; a prediction is scored by which values it contains.
"""

from __future__ import annotations

import numpy as np

from famlab.eval.suite.codec import Codec
from famlab.eval.suite.sample import NOUNS, Sample, assemble, draw_value, draw_words, random_depths


def needles_sample(
    codec: Codec,
    rng: np.random.Generator,
    task: str,
    length: int,
    depth: float,
    *,
    kind: str = "digits",
    keys: int = 1,
    values_per_key: int = 1,
    asked: int = 1,
) -> Sample:
    """``keys`` keys with ``values_per_key`` values each; the first ``asked`` keys are asked. The first
    needle (first key, first value) goes at ``depth``."""
    noun = NOUNS[kind]
    names = draw_words(rng, keys)
    taken = set(names)
    values: list[list[str]] = []
    for _ in names:
        vs = []
        for _ in range(values_per_key):
            vs.append(draw_value(rng, kind, taken))
            taken.add(vs[-1])
        values.append(vs)
    pairs = [(k, v) for k, vs in zip(names, values) for v in vs]
    depths = [depth] + [float(d) for d in rng.permutation(random_depths(rng, len(pairs) - 1))]
    needles = [(codec.fill("needle", noun=noun, key=k, value=v), d) for (k, v), d in zip(pairs, depths)]
    refs = [v for vs in values[:asked] for v in vs]
    if asked > 1:
        query = codec.fill("query_many", noun=noun, keys=", ".join(names[:asked]))
    elif values_per_key > 1:
        query = codec.fill("query_all", noun=noun, key=names[0])
    else:
        query = codec.fill("query", noun=noun, key=names[0])
    answer = codec.encode(codec.templates["sep"].join(refs))
    return assemble(codec, rng, task, length, codec.fill("head", noun=noun), needles, query, answer, refs)


def niah_single(kind: str):
    def make(codec: Codec, rng: np.random.Generator, length: int, depth: float) -> Sample:
        return needles_sample(codec, rng, f"niah_single_{kind}", length, depth, kind=kind)

    return make


def niah_multikey(codec: Codec, rng: np.random.Generator, length: int, depth: float, distractors: int = 3) -> Sample:
    return needles_sample(codec, rng, "niah_multikey", length, depth, keys=1 + distractors)


def niah_multivalue(codec: Codec, rng: np.random.Generator, length: int, depth: float, values: int = 4) -> Sample:
    return needles_sample(codec, rng, "niah_multivalue", length, depth, values_per_key=values)


def niah_multiquery(codec: Codec, rng: np.random.Generator, length: int, depth: float, queries: int = 4) -> Sample:
    return needles_sample(codec, rng, "niah_multiquery", length, depth, keys=queries, asked=queries)
