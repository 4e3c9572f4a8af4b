"""RULER's aggregation-style tasks: variable tracking, common-words and frequent-words extraction.

* ``vt`` (variable tracking): ``chains`` (default 1) chains of ``hops`` (default 4) assignments,
  "VAR AAAAA = 12345." then "VAR BBBBB = VAR AAAAA." ..., hidden in the haystack; the question gives the
  first chain's value and the answer is every variable of that chain. The chain's first assignment sits
  at the requested depth, its later links at random depths after it (other chains anywhere).
* ``cwe`` (common-words extraction): a list of words in which ``common`` (default 3) words appear
  ``freq_common`` (default 5) times each and the others ``freq_rare`` (default 1) time each, as many as
  the length holds; the answer is the common words, in the order they first appear. The list's few leftover tokens are haystack, before
  it. It has no needle, hence no depth.
* ``fwe`` (frequent-words extraction): a text of words with Zipf frequencies (RULER's alpha = 2): the word of
  rank r appears floor(C / r^alpha) times, C as large as the length holds (at least 18, the smallest C whose
  ``top`` = 3 most frequent words are strictly more frequent than every other, so the answer is unique),
  shuffled; the answer is the ``top`` most frequent words, most frequent first. RULER draws the words from a
  Zipf distribution and codes them; famlab takes the expected counts (exact, so a reader of the text always
  has one right answer) and English nouns. Leftover tokens are haystack, before the text; no depth.
"""

from __future__ import annotations

import numpy as np

from famlab.eval.suite.codec import Codec
from famlab.eval.suite.sample import (
    Sample,
    assemble,
    draw_name,
    draw_value,
    draw_words,
    nouns,
    random_depths,
    too_short,
)


def vt(codec: Codec, rng: np.random.Generator, length: int, depth: float, hops: int = 4, chains: int = 1) -> Sample:
    taken: set[str] = set()
    needles, refs, value = [], [], ""
    for c in range(chains):
        names = []
        for _ in range(hops + 1):
            names.append(draw_name(rng, taken))
            taken.add(names[-1])
        v = draw_value(rng, "digits", taken)
        taken.add(v)
        start = depth if c == 0 else float(rng.random())
        depths = [start] + random_depths(rng, hops, lo=start)
        needles.append((codec.fill("vt_value", name=names[0], value=v), depths[0]))
        needles += [(codec.fill("vt_link", name=n, prev=p), d) for n, p, d in zip(names[1:], names[:-1], depths[1:])]
        if c == 0:
            refs, value = names, v
    query = codec.fill("vt_query", value=value)
    answer = codec.encode(codec.templates["sep"].join(refs))
    return assemble(codec, rng, "vt", length, codec.fill("vt_head"), needles, query, answer, refs)


def cwe(
    codec: Codec,
    rng: np.random.Generator,
    length: int,
    depth: float = float("nan"),
    common: int = 3,
    freq_common: int = 5,
    freq_rare: int = 1,
) -> Sample:
    head = codec.fill("cwe_head")
    words = draw_words(rng, common)
    query = codec.fill("cwe_query", k=common)
    room = length - len(head) - len(query)  # for the list, the answer and the haystack before the list
    pool = [w for w in nouns() if w not in words]
    rare = [pool[i] for i in rng.permutation(len(pool))]
    seed = int(rng.integers(0, 2**32))

    def listed(n_rare: int) -> tuple[list[np.ndarray], list[str], np.ndarray]:
        """The list's entries with n_rare rare words, the common words in order of first appearance
        (the answer's order, so a reader can say it token for token), and the answer."""
        items = words * freq_common + rare[:n_rare] * freq_rare
        order = np.random.default_rng(seed).permutation(len(items))
        firsts = list(dict.fromkeys(items[j] for j in order if items[j] in words))
        entries = [codec.fill("cwe_entry", i=i + 1, word=items[j]) for i, j in enumerate(order)]
        return entries, firsts, codec.encode(codec.templates["sep"].join(firsts))

    def size(n_rare: int) -> int:
        entries, _, answer = listed(n_rare)
        return sum(len(e) for e in entries) + len(answer)

    if size(0) > room:
        raise too_short("cwe", length, length - room + size(0))
    lo, hi = 0, len(rare)  # the most rare words whose list fits (the list's length grows with them)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    entries, firsts, answer = listed(lo)
    body = np.concatenate(entries)
    pad = codec.haystack(rng, room - len(body) - len(answer))
    ids = np.concatenate([head, pad, body, query, answer]).astype(np.int64)
    return Sample(ids, len(answer), firsts)


def zipf_counts(c: int, alpha: float) -> list[int]:
    """floor(c / r^alpha) for ranks r = 1, 2, ... while it is >= 1."""
    out, r = [], 1
    while (n := int(c / r**alpha)) >= 1:
        out.append(n)
        r += 1
    return out


def fwe(
    codec: Codec, rng: np.random.Generator, length: int, depth: float = float("nan"), top: int = 3, alpha: float = 2.0
) -> Sample:
    head = codec.fill("fwe_head", k=top)
    query = codec.fill("fwe_query", k=top)
    room = length - len(head) - len(query)  # for the text, the answer and the haystack before the text
    smallest = next(c for c in range(1, 10_000) if len(z := zipf_counts(c, alpha)) > top and z[top - 1] > z[top])
    words = draw_words(rng, len(zipf_counts(max(smallest, length), alpha)))  # enough ranks for any C <= length
    seed = int(rng.integers(0, 2**32))
    answer = codec.encode(codec.templates["sep"].join(words[:top]))

    def text(c: int) -> np.ndarray:
        items = [w for w, n in zip(words, zipf_counts(c, alpha)) for _ in range(n)]
        order = np.random.default_rng(seed).permutation(len(items))
        return np.concatenate([codec.fill("fwe_entry", word=items[j]) for j in order])

    if len(text(smallest)) + len(answer) > room:
        raise too_short("fwe", length, length - room + len(text(smallest)) + len(answer))
    lo, hi = smallest, max(smallest, length)  # the largest C whose text fits (a word is at least one token)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(text(mid)) + len(answer) <= room:
            lo = mid
        else:
            hi = mid - 1
    body = text(lo)
    pad = codec.haystack(rng, room - len(body) - len(answer))
    ids = np.concatenate([head, pad, body, query, answer]).astype(np.int64)
    return Sample(ids, len(answer), words[:top])
