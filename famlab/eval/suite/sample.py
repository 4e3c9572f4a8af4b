"""What every synthetic task shares: a :class:`Sample` (exactly ``length`` tokens, prompt + answer), the
assembly of a haystack with needles at given depths, and the random keys and values (RULER's: 7-digit
numbers, English nouns from ``wonderwords``, uuid-like hex strings).

Depth is the fraction of the haystack before a needle: 0 = right after the instruction, 1 = right
before the question. A needle goes in at the codec's insertion point nearest to ``depth * haystack``
(ties: the earlier one), so its actual depth is within one word (bytes) or exact (symbols, tokens).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from famlab.eval.suite.codec import Codec

VALUE_KINDS = ("digits", "words", "uuid")
NOUNS = {"digits": "numbers", "words": "words", "uuid": "uuids"}


@dataclass
class Sample:
    """One prompt + answer: ``ids`` (exactly the requested length), the answer's last ``answer_len``
    tokens, the reference strings the prediction must contain (RULER scoring), the target needle's
    actual depth (nan where the task has none) and where its tokens start in ``ids`` (-1: none)."""

    ids: np.ndarray
    answer_len: int
    refs: list[str]
    depth: float = float("nan")
    needle_at: int = -1
    needles: list[int] = field(default_factory=list)  # start of every needle, in the order given
    hay_len: int = 0  # haystack tokens in the sample
    offset: int = 0  # haystack tokens before the target needle (depth = offset / hay_len)


class TooShort(ValueError):
    """A sample does not fit in the requested length."""


def too_short(task: str, length: int, need: int) -> TooShort:
    return TooShort(
        f"length={length} is not allowed for task {task}: expected >= {need} tokens (the fixed prompt of a sample; "
        "evaluate longer data.passkey_eval_lengths)"
    )


def assemble(
    codec: Codec,
    rng: np.random.Generator,
    task: str,
    length: int,
    head: np.ndarray,
    needles: list[tuple[np.ndarray, float]],
    query: np.ndarray,
    answer: np.ndarray,
    refs: list[str],
) -> Sample:
    """head + haystack with ``needles`` (ids, depth) + query + answer, exactly ``length`` tokens; the
    first needle is the target (its depth and start go into the sample)."""
    fixed = len(head) + sum(len(n) for n, _ in needles) + len(query) + len(answer)
    hay_len = length - fixed
    if hay_len < 0:
        raise too_short(task, length, fixed)
    hay = codec.haystack(rng, hay_len)
    points = codec.insertion_points(hay)
    offsets = [nearest(points, d * hay_len) for _, d in needles]
    order = sorted(range(len(needles)), key=lambda i: (offsets[i], i))
    parts, starts, pos, prev = [head], [0] * len(needles), len(head), 0
    for i in order:
        parts.append(hay[prev : offsets[i]])
        pos += offsets[i] - prev
        starts[i] = pos
        parts.append(needles[i][0])
        pos += len(needles[i][0])
        prev = offsets[i]
    parts += [hay[prev:], query, answer]
    ids = np.concatenate(parts).astype(np.int64)
    depth = offsets[0] / hay_len if hay_len else 0.0
    return Sample(
        ids, len(answer), refs, depth=depth, needle_at=starts[0], needles=starts, hay_len=hay_len, offset=offsets[0]
    )


def nearest(points: np.ndarray, x: float) -> int:
    """The point nearest to x (ties: the earlier one); ``points`` sorted."""
    i = int(np.searchsorted(points, x))
    cands = points[max(i - 1, 0) : i + 1]
    return int(cands[np.argmin(np.abs(cands - x))])


def random_depths(rng: np.random.Generator, n: int, lo: float = 0.0) -> list[float]:
    """n depths uniform in [lo, 1], sorted."""
    return sorted(float(lo + (1 - lo) * rng.random()) for _ in range(n))


@functools.cache
def nouns() -> tuple[str, ...]:
    """Lowercase English nouns of 3 to 8 letters (wonderwords' list, its profanity filter applied), sorted:
    the keys, word values and common words."""
    from wonderwords import RandomWord, is_profanity

    found = RandomWord().filter(include_categories=["noun"], regex=r"[a-z]{3,8}")
    return tuple(sorted(w for w in set(found) if not is_profanity(w)))


def draw_words(rng: np.random.Generator, n: int, avoid: set[str] = frozenset()) -> list[str]:
    """n distinct nouns, none of them in ``avoid``."""
    pool = nouns()
    out: list[str] = []
    while len(out) < n:
        w = pool[int(rng.integers(0, len(pool)))]
        if w not in avoid and w not in out:
            out.append(w)
    return out


def draw_value(rng: np.random.Generator, kind: str, avoid: set[str] = frozenset()) -> str:
    """A value of ``kind``: a 7-digit number (no leading zero), a noun, or a uuid-like 8-4-4-4-12 hex string."""
    while True:
        if kind == "digits":
            v = str(int(rng.integers(1_000_000, 10_000_000)))
        elif kind == "words":
            v = draw_words(rng, 1)[0]
        else:
            h = "".join("0123456789abcdef"[i] for i in rng.integers(0, 16, size=32))
            v = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        if v not in avoid:
            return v


def draw_name(rng: np.random.Generator, avoid: set[str]) -> str:
    """A variable name of 5 uppercase letters (RULER's variable tracking)."""
    while True:
        v = "".join(chr(65 + int(i)) for i in rng.integers(0, 26, size=5))
        if v not in avoid:
            return v
