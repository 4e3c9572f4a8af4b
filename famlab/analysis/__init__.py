"""Analysis of famlab sweeps and runs: tidy frames, seed aggregates, paper-shaped tables, claims, plots.

Typical use (the notebooks in ``analysis/`` are thin wrappers around this)::

    from famlab import analysis as fa
    res = fa.load_sweep("fam_length", "tiny")          # default store runs/sweeps/fam_length/tiny.db
    res = fa.load_sweep("passkey", "paper", storage="postgresql://...")
    fa.ablation_table(res)        # mean, std, 95% t-interval and n over seeds, per setting
    fa.paper_table(res)           # famlab's metrics beside the paper's numbers, in the paper's shape
    fa.paper_agreement(res)       # does famlab order the settings as the paper does (Spearman, signs)
    fa.paper_claims(res)          # the paper's findings (the spec's ``claims:``): effect, 95% interval, verdict
    fa.scoreboard("tiny")         # every claim of every study, one row each (``famlab claims``)
    fa.eval_table(res)            # evaluation tables (PassKey accuracy by length x variant, ...)
    fa.to_markdown(t), fa.to_latex(t)

The modules: ``frames`` (the only reader of Optuna storages and run directories), ``results``
(a sweep's trials with its spec), ``stats``, ``tables``, ``evals``, ``suite`` (the long-context suite's heatmaps and effective lengths),
``verdicts``, ``claims``, ``scoreboard``, ``plots``,
``export``, ``cost`` (bench results) and ``locate`` (where the stores and bench results are found
when not given: the working directory, then its parents).
"""

from famlab.analysis.claims import (
    CHECKS,
    ClaimResult,
    Comparison,
    Finding,
    NotTestable,
    check_claim,
    check_kind,
    evaluate_claims,
    paper_claims,
    spec_claims,
)
from famlab.analysis.cost import bench_summary, cost_table, load_bench, paper_cost_table, plot_cost
from famlab.analysis.evals import EVAL_ROW_KEYS, EVAL_VALUE_KEYS, eval_aggregate, eval_long, eval_table, eval_values
from famlab.analysis.export import all_tables, export_tables, to_latex, to_markdown
from famlab.analysis.frames import (
    eval_frame,
    load_runs,
    load_studies,
    load_study,
    read_curves,
    run_config,
    status_table,
    study_names,
    trials_frame,
)
from famlab.analysis.locate import bench_dir, find_up, runs_root
from famlab.analysis.plots import METRIC_LABELS, PARAM_LABELS, plot_ablation, plot_curves, plot_eval, plot_grid
from famlab.analysis.results import SweepResults, load_sweep, run_setting, storage_for
from famlab.analysis.scoreboard import (
    NOT_RUN,
    claim_studies,
    claims_text,
    scoreboard,
    scoreboard_markdown,
    scoreboard_text,
    verdict_counts,
)
from famlab.analysis.state_size import plot_state_size, state_size_table
from famlab.analysis.stats import STATS, aggregate, lower_is_better, mean_ci, spearman, t_cdf, t_ppf
from famlab.analysis.suite import effective_length_table, plot_suite_heatmaps, suite_long
from famlab.analysis.tables import (
    ablation_table,
    ablation_text,
    format_mean_ci,
    paper_agreement,
    paper_reference,
    paper_table,
    seed_scores,
    trial_table,
)
from famlab.analysis.verdicts import (
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    VERDICTS,
    Effect,
    paired_difference,
    rank_correlation,
    verdict,
)

__all__ = [
    "CHECKS",
    "CONTRADICTED",
    "HOLDS",
    "INCONCLUSIVE",
    "VERDICTS",
    "Comparison",
    "Effect",
    "Finding",
    "EVAL_ROW_KEYS",
    "EVAL_VALUE_KEYS",
    "METRIC_LABELS",
    "NOT_RUN",
    "PARAM_LABELS",
    "STATS",
    "ClaimResult",
    "NotTestable",
    "SweepResults",
    "ablation_table",
    "ablation_text",
    "aggregate",
    "all_tables",
    "bench_dir",
    "bench_summary",
    "check_claim",
    "check_kind",
    "claim_studies",
    "claims_text",
    "cost_table",
    "effective_length_table",
    "eval_aggregate",
    "eval_frame",
    "eval_long",
    "eval_table",
    "eval_values",
    "evaluate_claims",
    "export_tables",
    "find_up",
    "format_mean_ci",
    "load_bench",
    "load_runs",
    "load_studies",
    "load_study",
    "load_sweep",
    "lower_is_better",
    "mean_ci",
    "paired_difference",
    "paper_agreement",
    "paper_claims",
    "paper_cost_table",
    "paper_reference",
    "paper_table",
    "plot_ablation",
    "plot_cost",
    "plot_curves",
    "plot_eval",
    "plot_grid",
    "plot_state_size",
    "plot_suite_heatmaps",
    "rank_correlation",
    "read_curves",
    "run_config",
    "run_setting",
    "runs_root",
    "scoreboard",
    "scoreboard_markdown",
    "scoreboard_text",
    "seed_scores",
    "spearman",
    "spec_claims",
    "state_size_table",
    "status_table",
    "storage_for",
    "study_names",
    "suite_long",
    "t_cdf",
    "t_ppf",
    "to_latex",
    "to_markdown",
    "trial_table",
    "trials_frame",
    "verdict",
    "verdict_counts",
]
