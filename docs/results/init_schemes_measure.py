"""The init-scheme measurement of docs/init.md: PassKey (the passkey_demo recipe, FAM m=0, 1500 steps) and
text / recall (the tiny preset, 300 steps), three seeds per scheme, one thread.

    python docs/results/init_schemes_measure.py OUT_DIR [passkey] [text] [recall]
    INITS=scaled,gpt2 python docs/results/init_schemes_measure.py ...

Appends one JSON row per run to OUT_DIR/init_results.jsonl and skips the runs already there. (The committed
rows were measured with this script on the tree just before the layout redesign, where the d^-1/2 tied
variant, today's ``scaled``, was named ``scaled_half`` and the d^-1/4 one ``scaled``.)
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

from famlab.config import load_run_config
from famlab.experiments.passkey_demo import BY_KEY, run_variant
from famlab.train import quiet_lightning, train

INITS = tuple(os.environ.get("INITS", "scaled,gpt2,torch").split(","))
SEEDS = (0, 1, 2)


def measure(task: str, init: str, seed: int, out: Path) -> dict:
    t0 = time.time()
    if task == "passkey":
        overrides = [f"model.init={init}", "train.max_steps=1500", "data.seq_len_schedule=[[0,32],[500,64],[1000,128]]"]
        r = run_variant(
            BY_KEY["fam-m0"],
            [*overrides, "logger.wandb=disabled"],
            out / f"pk-{init}-{seed}",
            seed=seed,
            eval_kw={"depth_buckets": 4, "samples": 16},
            multiples=(1, 4),
        )
        row = {"acc_1x": r["results"][0]["accuracy"], "acc_4x": r["results"][1]["accuracy"]}
        row["final_train_loss"] = r["final_train_loss"]
    else:
        overrides = [f"model.init={init}", f"data.task={task}", "train.max_steps=300", "train.val_every=100"]
        overrides += ["train.checkpoint_every=0", "logger.wandb=disabled", f"seed={seed}", f"out_dir={out}"]
        run_dir = train(load_run_config("tiny", [*overrides, f"name={task}-{init}-{seed}"]))
        final = json.loads((run_dir / "final_metrics.json").read_text())
        row = {"val_loss": final.get("val/loss"), "train_loss": final.get("train/loss_recent_mean")}
    return {"task": task, "init": init, "seed": seed, **row, "wall_s": time.time() - t0}


def main() -> None:
    torch.set_num_threads(1)
    quiet_lightning()
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    results = out / "init_results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {(r["task"], r["init"], r["seed"]) for r in rows}
    for task in sys.argv[2:] or ["passkey", "text", "recall"]:
        for seed in SEEDS:
            for init in INITS:
                if (task, init, seed) not in done:
                    row = measure(task, init, seed, out)
                    with results.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(row, flush=True)


if __name__ == "__main__":
    main()
