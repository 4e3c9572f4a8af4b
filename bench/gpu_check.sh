#!/usr/bin/env bash
# The GPU check (about 3 minutes on one H100/H200): the model's equivalence tests on CUDA, then the
# training-step benchmark in bf16 at T=4k and 16k, all written to one JSON file.
#
#   bench/gpu_check.sh [OUT_JSON]        (default: $OUT/gpu_check.json if $OUT is set, else
#                                         bench/results/gpu_check.json)
#
# It uses the machine's own CUDA build of torch (PY=python3 by default; set PY to another interpreter)
# and famlab from this checkout (PYTHONPATH), so it never replaces torch with the CPU wheel the Makefile
# pins. What it needs besides torch: pytest and hypothesis; each is pip-installed only if missing (from
# the index, or from a folder of wheels: WHEELS=path). Exit status: 0 if every test passed and both
# benchmarks ran; the JSON is written either way.
#
# DEVICE=cpu SEQ_LENS=512 BENCH_ARGS="--block-size 64 --iters 1" runs the same flow on the CPU (a dry run
# of this script without a GPU); SEQ_LENS and BENCH_ARGS change the benchmark on a GPU too.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT_JSON=${1:-${OUT:-bench/results}/gpu_check.json}
DEVICE=${DEVICE:-cuda}
SEQ_LENS=${SEQ_LENS:-4096 16384}
# also bswa vs fam vs FAM compiled: the scan, plain and as CUDA graphs (train.compile=fam_scan), and each
# update as CUDA graphs (train.compile=fam_update), at these T ('' = none)
COMPILED_SEQ_LENS=${COMPILED_SEQ_LENS-4096}
BENCH_ARGS=${BENCH_ARGS:---batch-size 8 --warmup 3 --iters 10 --matmul-size 8192}
WORK=${WORK:-$(mktemp -d)}   # logs and per-T results (set WORK to keep them)
mkdir -p "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled FAMLAB_TEST_DEVICE=$DEVICE
mkdir -p "$(dirname "$OUT_JSON")"

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "gpu_check: $PY has no torch that sees a CUDA device" >&2
    exit 3
fi
for mod in pytest hypothesis; do
    if ! "$PY" -c "import $mod" 2>/dev/null; then
        if [ -n "${WHEELS:-}" ]; then
            "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$mod"
        else
            "$PY" -m pip install -q "$mod"
        fi
    fi
done
status=0

echo "== equivalence tests on $DEVICE (tests/test_gpu.py)"
timeout 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py --junitxml "$WORK/tests.xml" 2>&1 \
    | tee "$WORK/tests.log" || status=1

for T in $SEQ_LENS; do
    echo "== training-step benchmark, bf16, T=$T"
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of options
    timeout 120 "$PY" -m famlab.bench --device "$DEVICE" --dtype bfloat16 --seq-len "$T" --no-memory \
        --variants full,bswa,txl,fam,fam-layer-major,fam-ref $BENCH_ARGS --out-dir "$WORK/bench_$T" 2>&1 | tee "$WORK/bench_$T.log" \
        || status=1
done
for T in $COMPILED_SEQ_LENS; do
    echo "== training-step benchmark, bf16, T=$T, FAM scan compiled"
    # shellcheck disable=SC2086
    timeout 180 "$PY" -m famlab.bench --device "$DEVICE" --dtype bfloat16 --seq-len "$T" --no-memory \
        --variants bswa,fam,fam-compiled,fam-graphs,fam-graphs-update $BENCH_ARGS --out-dir "$WORK/bench_${T}_compiled" 2>&1 \
        | tee "$WORK/bench_${T}_compiled.log" || status=1
done

"$PY" - "$WORK" "$OUT_JSON" "$status" <<'PYEOF'
import glob, json, platform, subprocess, sys, xml.etree.ElementTree as ET
import torch

work, out, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
res = {
    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "python": platform.python_version(),
    "exit_status": status,
}
try:
    res["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20,
    ).stdout.strip()
except Exception as e:  # noqa: BLE001 - informational only
    res["nvidia_smi"] = f"unavailable: {e}"
try:
    suite = ET.parse(f"{work}/tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = []
    for case in suite.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = tag
        cases.append({"name": case.get("name"), "outcome": outcome, "time_s": float(case.get("time", 0))})
    res["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {"cases": cases}
except (OSError, ET.ParseError) as e:
    res["tests"] = {"error": f"no test report: {e}"}
res["bench"] = {}
for path in sorted(glob.glob(f"{work}/bench_*/bench_*.json")):
    b = json.load(open(path))
    key = path.rsplit("/", 2)[-2].removeprefix("bench_")  # "4096", "16384", "4096_compiled"
    res["bench"][key] = {
        "config": b["config"],
        "matmul_peak_tflops": b["matmul"]["peak_gflops"] / 1e3,
        "targets": b["targets"],
        "variants": [
            {k: v.get(k) for k in ("name", "impl", "step_time_median_s", "tokens_per_s", "tokens_per_s_vs_bswa",
                                   "peak_mem_mb", "peak_mem_vs_full", "achieved_gflops", "frac_matmul_peak")}
            for v in b["variants"]
        ],
    }
    res["bench"][key]["markdown"] = open(path.rsplit("/", 1)[0] + "/latest.md").read()
json.dump(res, open(out, "w"), indent=2)
print(f"gpu_check: wrote {out} (exit status {status})")
PYEOF
exit $status
