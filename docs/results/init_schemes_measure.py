"""Measure the init schemes: PassKey (passkey_demo recipe, FAM m=0, shortened), text and recall (tiny preset).
One process, one thread; appends one JSON line per run to exp/init_results.jsonl."""
import json, os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from famlab.experiments.passkey_demo import BY_KEY, run_variant
from famlab.config import load_run_config
from famlab.train import train, quiet_lightning
quiet_lightning()
OUT = Path("/work/initexp/exp/runs"); RES = Path("/work/initexp/exp/init_results.jsonl")
INITS = tuple(os.environ.get("INITS", "gpt2,torch,scaled").split(",")); SEEDS = (0, 1, 2)
done = {(r["task"], r["init"], r["seed"]) for r in map(json.loads, RES.read_text().splitlines())} if RES.exists() else set()
def log(row):
    with RES.open("a") as f: f.write(json.dumps(row) + "\n")
    print(row, flush=True)
which = sys.argv[1:] or ["passkey", "text", "recall"]
for task in which:
    for seed in SEEDS:
        for init in INITS:
            if (task, init, seed) in done: continue
            t0 = time.time()
            if task == "passkey":
                r = run_variant(BY_KEY["fam-m0"], [f"model.init={init}", "train.max_steps=1500",
                     "data.seq_len_schedule=[[0,32],[500,64],[1000,128]]", "logger.wandb=disabled"],
                     OUT / f"pk-{init}-{seed}", seed=seed, eval_kw={"depth_buckets": 4, "samples": 16}, multiples=(1, 4))
                log({"task": task, "init": init, "seed": seed, "acc_1x": r["results"][0]["accuracy"],
                     "acc_4x": r["results"][1]["accuracy"], "final_train_loss": r["final_train_loss"], "wall_s": time.time() - t0})
            else:
                cfg = load_run_config("tiny", [f"model.init={init}", f"data.task={task}", "train.max_steps=300",
                     "train.val_every=100", "train.checkpoint_every=0", "logger.wandb=disabled", f"seed={seed}",
                     f"out_dir={OUT}", f"name={task}-{init}-{seed}"])
                run_dir = train(cfg)
                fm = json.loads((run_dir / "final_metrics.json").read_text())
                log({"task": task, "init": init, "seed": seed, "val_loss": fm.get("val/loss"),
                     "train_loss": fm.get("train/loss_recent_mean"), "wall_s": time.time() - t0})
