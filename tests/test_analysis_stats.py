"""famlab.analysis.stats: t quantiles, the t-interval of a mean, Spearman, per-setting aggregates,
against published table values and hand-computed numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from famlab import analysis as fa


@pytest.mark.parametrize(
    ("q", "dof", "expected"),
    [(0.975, 1, 12.706204736), (0.975, 2, 4.302652730), (0.975, 4, 2.776445105), (0.975, 30, 2.042272456)]
    + [(0.995, 10, 3.169272673), (0.9, 5, 1.475884049), (0.025, 3, -3.182446305), (0.975, math.inf, 1.959963985)],
)
def test_t_quantiles_match_tables(q, dof, expected):
    assert fa.t_ppf(q, dof) == pytest.approx(expected, abs=1e-7)
    assert fa.t_cdf(expected, dof) == pytest.approx(q, abs=1e-10)


@pytest.mark.parametrize(("q", "dof"), [(0.0, 3), (1.0, 3), (0.5, 0), (0.5, -1)])
def test_t_quantile_rejects_impossible_arguments(q, dof):
    with pytest.raises(ValueError, match="is not allowed"):
        fa.t_ppf(q, dof)


def test_mean_ci_by_hand():
    # 1, 2, 3, 4: mean 2.5, s^2 = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, half = t(0.975, 3) s / 2
    out = fa.mean_ci([1.0, 2.0, 3.0, 4.0, float("nan")])
    s = math.sqrt(5 / 3)
    assert out["n"] == 4 and out["mean"] == 2.5 and out["std"] == pytest.approx(s)
    assert out["ci_half"] == pytest.approx(3.182446305 * s / 2)
    assert out["ci_low"] == pytest.approx(2.5 - 3.182446305 * s / 2)
    assert out["ci_high"] == pytest.approx(2.5 + 3.182446305 * s / 2)
    one = fa.mean_ci([7.0])
    assert one["mean"] == 7.0 and one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci_half"])
    assert fa.mean_ci([])["n"] == 0 and math.isnan(fa.mean_ci([None])["mean"])
    # 90% interval of 2 values: mean 1.5, s = 0.7071, half = t(0.95, 1) * s / sqrt(2) = 6.3138 * 0.5
    assert fa.mean_ci([1.0, 2.0], level=0.9)["ci_half"] == pytest.approx(6.313751515 * 0.5)


def test_aggregate_groups_complete_trials_and_orders_settings():
    df = pd.DataFrame(
        {
            "state": ["COMPLETE"] * 5 + ["FAIL"],
            "variant": ["M1", "M1", "FAM", "FAM", "FAM", "M1"],
            "seed": [0, 1, 0, 1, 2, 2],
            "val/loss": [2.0, 4.0, 1.0, 2.0, 6.0, 100.0],
        }
    )
    agg = fa.aggregate(df, "variant", ["val/loss"], order={"variant": ["M1", "FAM"]})
    assert list(agg.index) == ["M1", "FAM"]
    assert list(agg.columns.get_level_values("stat")) == list(fa.STATS)
    m1, f = agg.loc["M1", "val/loss"], agg.loc["FAM", "val/loss"]
    assert m1["mean"] == 3.0 and m1["n"] == 2 and m1["std"] == pytest.approx(math.sqrt(2))
    assert m1["ci_half"] == pytest.approx(12.706204736 * math.sqrt(2) / math.sqrt(2))
    assert f["mean"] == 3.0 and f["n"] == 3 and f["std"] == pytest.approx(math.sqrt(7))
    assert f["ci_half"] == pytest.approx(4.302652730 * math.sqrt(7) / math.sqrt(3))
    # without an order: numbers by value, then text; a FAILED trial never counts
    plain = fa.aggregate(df.assign(k=[10, 10, 2, 2, "x", 10]), "k", ["val/loss"])
    assert list(plain.index) == [2, 10, "x"] and plain.loc[10, ("val/loss", "n")] == 2


def test_spearman_by_hand():
    assert fa.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fa.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): sum dx dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5
    assert fa.spearman([1, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # 1 - 6 sum d^2 / (n (n^2 - 1)) without ties: ranks (1, 3, 2, 4) vs (3, 1, 2, 4): d^2 = 4 + 4 = 8
    assert fa.spearman([1, 3, 2, 4], [3, 1, 2, 4]) == pytest.approx(1 - 6 * 8 / (4 * 15))
    assert fa.spearman([1, 2, float("nan"), 3], [1, 2, 9, 3]) == pytest.approx(1.0)  # NaN pairs drop out
    assert math.isnan(fa.spearman([1], [2])) and math.isnan(fa.spearman([1, 1], [1, 2]))


def test_lower_is_better():
    assert fa.lower_is_better("val/loss") and fa.lower_is_better("eval/bpb")
    assert not fa.lower_is_better("eval/accuracy") and not fa.lower_is_better("tokens_per_s")
    assert not fa.lower_is_better("val/loss", "maximize")  # the spec's direction wins
