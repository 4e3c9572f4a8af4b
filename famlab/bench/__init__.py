"""famlab's benchmarks: the training step (``python -m famlab.bench``), streaming inference
(``python -m famlab.bench.stream``) and peer implementations (``python -m famlab.bench.peers``).

``common`` holds what the three share (options, machine and code records, memory high-water helpers,
results writing); ``step`` the variants and one training step of each; ``flops`` the FLOP counting
and the matmul ceiling; ``train_step`` the training-step benchmark's run and command line, and
``train_step_report`` its results and Markdown."""

from famlab.bench.common import base_config, machine_info, report_results
from famlab.bench.flops import flop_path, forward_flops, matmul_ceiling_s, model_matmul_shapes, time_matmul
from famlab.bench.step import (
    AUTOCAST,
    COMPILED,
    DEFAULT_VARIANTS,
    VARIANTS,
    build,
    measure_memory,
    time_fam_scan,
    variant_config,
)
from famlab.bench.train_step import main, parse_args, profile_variant, run_bench
from famlab.bench.train_step_report import FLOPS_TARGET, THROUGHPUT_TARGET, render_markdown

# not re-exported: the training-step function ``famlab.bench.step.train_step``, whose name would hide the
# module ``famlab.bench.train_step``
__all__ = [
    "AUTOCAST",
    "COMPILED",
    "DEFAULT_VARIANTS",
    "FLOPS_TARGET",
    "THROUGHPUT_TARGET",
    "VARIANTS",
    "base_config",
    "build",
    "flop_path",
    "forward_flops",
    "machine_info",
    "main",
    "matmul_ceiling_s",
    "measure_memory",
    "model_matmul_shapes",
    "parse_args",
    "profile_variant",
    "render_markdown",
    "report_results",
    "run_bench",
    "time_fam_scan",
    "time_matmul",
    "variant_config",
]
