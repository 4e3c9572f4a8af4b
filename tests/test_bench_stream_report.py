"""famlab.bench.stream_report: the streaming targets at their tolerances, n/a where a variant ran at
one length only, and the token counts as the report writes them."""

from __future__ import annotations

import pytest

from famlab.bench.stream_report import flatness, fmt_tokens, make_targets


def _row(variant: str, tokens: int, rss: float, speed: float, skipped: bool = False) -> dict:
    return {
        "variant": variant,
        "tokens": tokens,
        "skipped": skipped,
        "peak_rss_mb": rss,
        "stream_increase_mb": rss / 10,
        "tokens_per_s_total": speed,
        "tokens_per_s_median_chunk": 2 * speed,
        "state_storage_bytes": 1000,
    }


def test_fmt_tokens_writes_binary_multiples_and_plain_counts():
    assert [fmt_tokens(n) for n in (1 << 20, 3 << 20, 131072, 1000, 1536)] == ["1M", "3M", "128k", "1000", "1536"]


def test_flatness_compares_the_longest_measured_length_with_the_shortest():
    rows = [_row("fam", 4096, 105.0, 90.0), _row("fam", 1024, 100.0, 100.0), _row("fam", 8192, 1.0, 1.0, True)]
    rows += [_row("full", 1024, 50.0, 10.0)]
    flat = flatness(rows, ["fam", "full"], stat="total")
    assert (flat["fam"]["shortest"], flat["fam"]["longest"]) == (1024, 4096)  # the skipped row does not count
    assert flat["fam"]["rss_ratio"] == pytest.approx(1.05) and flat["fam"]["speed_ratio"] == pytest.approx(0.9)
    assert flat["full"]["shortest"] is None and flat["full"]["rss_ratio"] is None
    assert flatness(rows, ["fam"], stat="median")["fam"]["speed_ratio"] == pytest.approx(0.9)


@pytest.mark.parametrize(
    "rss, speed, prefill, expected",
    [
        (1.049, 0.901, 0.80, ("PASS", "PASS", "PASS")),
        (0.951, 1.099, 0.80, ("PASS", "PASS", "PASS")),
        (1.051, 0.899, 0.799, ("FAIL", "FAIL", "FAIL")),
        (0.949, 1.101, 1.50, ("FAIL", "FAIL", "PASS")),
    ],
)
def test_targets_at_their_tolerances(rss, speed, prefill, expected):
    flat = {"fam": {"shortest": 1024, "longest": 1 << 20, "rss_ratio": rss, "speed_ratio": speed}}
    pre = [
        {
            "variant": "fam",
            "tokens": 16384,
            "ratio": prefill,
            "stream_tokens_per_s": 80.0,
            "parallel_tokens_per_s": 100,
        },
        {"variant": "full", "tokens": 16384, "ratio": 0.1, "stream_tokens_per_s": 1.0, "parallel_tokens_per_s": 10.0},
    ]
    targets = make_targets(flat, pre)
    assert list(targets) == ["rss_flat_fam", "speed_flat_fam", "prefill_fam"]  # full has no target
    assert tuple(t["status"] for t in targets.values()) == expected
    assert targets["rss_flat_fam"]["name"] == "fam: peak RSS flat within 5% (1M vs 1k)"
    assert targets["speed_flat_fam"]["name"] == "fam: tokens/s flat within 10% (1M vs 1k)"
    assert targets["prefill_fam"]["value_text"] == f"{prefill:.3f}x (80 vs 100 tokens/s)"


def test_one_length_only_is_not_applicable():
    flat = {"bswa": {"shortest": None, "longest": None, "rss_ratio": None, "speed_ratio": None}}
    targets = make_targets(flat, [])
    assert {k: (t["status"], t["value_text"]) for k, t in targets.items()} == {
        "rss_flat_bswa": ("n/a", "n/a (needs two lengths)"),
        "speed_flat_bswa": ("n/a", "n/a (needs two lengths)"),
    }
    assert targets["rss_flat_bswa"]["name"] == "bswa: peak RSS flat within 5% (n/a)"
