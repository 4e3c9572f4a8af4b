"""The LightningModule that trains a :class:`~famlab.model.FamLM` on famlab batches.

Choices (each one deliberate; see also :class:`famlab.config.TrainConfig`):

* **Loss**: ``sum(weight * CE) / sum(weight)`` over the batch, computed in fp32 from the logits.
  Validation reports the token-weighted mean over all validation batches (and ranks), not a mean
  of per-batch means, plus the same in bits (``val/bits_per_token``; tokens are bytes).
* **Optimizers**: AdamW with decoupled weight decay on matrices only, never on the token embedding
  or the FAM prompt/prefix (norm gains and biases are 1-D and never decayed either); or
  ``torch.optim.Adafactor`` with the same grouping. LR schedule: ``LambdaLR`` stepped once per
  optimizer step with :meth:`TrainConfig.lr_factor_at` (warm-up, then constant or cosine).
* **Randomness**: the model's own random draws (random position offset, the RSP coin) come from a
  generator reseeded at every training micro-step from ``(seed, micro-step, rank)``, inside
  ``torch.random.fork_rng``. So a run's randomness does not depend on what else touches the global
  RNG (data loading, validation, logging), and a resumed run reproduces the uninterrupted one
  exactly without saving RNG states. The micro-step counter is saved in the checkpoint.
  ``seed_everything(seed, workers=True)`` seeds everything else (initialisation).
* **RPO and RSP** (:mod:`famlab.train.regularizers`) draw the state a training call starts from;
  before each training step ``rsp.prob`` is set from :meth:`TrainConfig.rsp_prob_at` at the current
  optimizer step.
* **Stateful training** (``data.stateful``): the :class:`~famlab.model.FamState` after each window
  is detached (truncated BPTT: gradients never cross a window boundary) and carried to the next
  window; a batch with ``new_episode`` starts from ``state=None`` (a fresh FAM, new random offset,
  the RSP coin). The carried state is saved in checkpoints (as plain tensors) so resuming continues
  the episode. Validation carries its own state the same way, reset at every validation run.
  The carried stateful-training state is restored on resume only for single-process runs.
* **Auxiliary losses** (``train.diversity_loss_weight``, ``train.reconstruction_loss_weight``; App. C.4 and C.5,
  defined in :mod:`famlab.model.aux_losses`): the training forward runs with a collector, and the objective
  is CE + sum(weight * aux loss); ``train/loss`` stays the LM loss alone. Validation computes none. Weights 0
  (the default): no collector, the training step is what it was without them.
* **Divergence**: the first non-finite training loss raises :class:`~famlab.train.stops.Diverged` before
  its backward pass (``famlab train`` exits 3; see :mod:`famlab.train.stops`).
* **Logged metrics**: ``train/loss`` (0 for a window without targets, possible when stateful),
  ``train/weight`` (sum of the loss weights), ``train/lr``, ``train/tokens_per_s`` (all ranks, wall
  time between steps, validation excluded), ``train/tokens``, ``train/rsp_prob``, ``train/seq_len``,
  ``train/grad_norm`` (before clipping); for passkey and recall ``train/answer_acc`` (:func:`answer_accuracy`,
  the adaptive curriculum's default metric); ``val/loss`` and ``val/bits_per_token``; with an auxiliary loss on,
  ``train/diversity_loss`` / ``train/reconstruction_loss`` (unweighted, the mean over the optimizer step's
  micro-batches).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from famlab.config import RunConfig
from famlab.config.metrics import aux_weight_keys
from famlab.model import FamState, aux_losses, compile_model, state_from_dict, state_to, state_to_dict
from famlab.train.factory import CKPT_KEY, build_model
from famlab.train.quiet import quiet_lightning
from famlab.train.regularizers import RandomStatePassing, training_start, upgrade_checkpoint
from famlab.train.stops import Diverged

LN2 = math.log(2.0)


def _f64(value: float) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float64)


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum(weight * CE), sum(weight)) in fp32; the loss is their ratio."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none")
    w = weight.float().flatten()
    return (ce * w).sum(), w.sum()


@torch.no_grad()
def answer_accuracy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fraction of the rows with targets (weight > 0) whose every target is the argmax of its logits
    (teacher forcing): PassKey's whole-key accuracy, all queries right for recall. 0 without targets.
    No boolean indexing, so no host sync on an accelerator."""
    scored = weight > 0
    wrong = ((logits.argmax(-1) != target) & scored).any(1)
    rows = scored.any(1)
    return (rows & ~wrong).sum().float() / rows.sum().clamp_min(1).float()


class FamLightningModule(pl.LightningModule):
    """FamLM trained on famlab batches (``input``, ``target``, ``weight``, optional ``new_episode``).

    ``cfg`` is the whole :class:`RunConfig` (model shape, optimiser, schedules, seed)."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = cfg
        self.model = build_model(cfg)
        self.rsp = RandomStatePassing(cfg.model)  # random state passing: P(RSP) now and the remembered memory
        compile_model(self.model, cfg.train.compile, cfg.train.compile_mode)
        # CUDA graphs (compile mode reduce-overhead) reuse their output memory at the next step
        self.cuda_graphs = cfg.train.compile != "none" and cfg.train.compile_mode == "reduce-overhead"
        self.carried: FamState | None = None  # stateful training: the state after the last window
        self.val_state: FamState | None = None
        self.micro_step = 0  # training batches seen (keys the per-step RNG; saved in checkpoints)
        self.tokens_seen = 0  # input tokens over all ranks (saved in checkpoints)
        self.recent_losses: deque[float] = deque(maxlen=50)
        self.last_weight = torch.zeros(())  # sum of the loss weights of the last training batch
        self.last_lm_loss = torch.zeros(())  # the LM loss (weighted CE) of the last training batch
        # auxiliary losses on (train.<name>_loss_weight > 0): {name: weight}; their values of the last batch
        self.aux_weights = {k.removesuffix("_loss_weight"): getattr(cfg.train, k) for k in aux_weight_keys(cfg)}
        self.aux_values: dict[str, torch.Tensor] = {}
        self._aux_step: tuple[dict[str, torch.Tensor], int, int] | None = None  # (sums, micro-batches, its step)
        self.answer_acc: torch.Tensor | None = None  # answer_accuracy of the last training batch (passkey, recall)
        # sums over the micro-batches of the optimizer step in progress: (sum w*loss, sum w, its step)
        self._acc_step: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.skipped_steps = 0  # optimizer steps without any target, which changed no weight
        self._t_last: float | None = None
        self._step_tokens = 0
        self._val_sums: list[torch.Tensor] = []

    # --- helpers ------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        quiet_lightning()  # again in processes that Lightning spawned (filters do not travel)

    def forward(self, tokens: torch.Tensor, **kw: Any) -> Any:
        return self.model(tokens, **kw)

    @contextlib.contextmanager
    def step_rng(self):
        """The model's random draws for this micro-step come from a generator seeded by
        (seed, micro-step, rank); the global RNG state is left as it was."""
        seed = (self.cfg.seed * 1_000_003 + self.micro_step) * 1_009 + self.global_rank
        seed %= 2**63
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.random.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.default_generators[devices[0]].manual_seed(seed)
            yield

    def set_rsp_prob(self) -> float:
        p = self.cfg.train.rsp_prob_at(self.global_step, self.cfg.model.rsp_prob)
        self.rsp.prob = p
        return p

    @staticmethod
    def _new_episode(batch: dict[str, Any]) -> bool:
        flag = batch.get("new_episode")
        if flag is None:
            return True
        return bool(torch.as_tensor(flag).any())

    def _run(self, batch: dict[str, Any], state: FamState | None, stateful: bool):
        """Forward; returns (sum(w*CE), sum(w), state after the window or None)."""
        x = batch["input"]
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the last step's graphs may be overwritten
        remember = self.model.training and self.rsp.needs_final_state
        if state is None and self.model.training:  # RPO and RSP draw the start of a training call
            state = training_start(self.model, self.rsp, x.shape[0], x.device)
        with self.aux_collector() as aux:
            if not (stateful or remember):
                logits, new_state = self.model(x, state=state), None
            else:
                logits, new_state = self.model(
                    x, state=state if state is None else state_to(state, x.device), return_state=True
                )
        if aux is not None:
            self.aux_values = aux.losses()
        if remember:
            self.rsp.remember(new_state)
        new_state = new_state.detach() if stateful else None
        if self.cuda_graphs and stateful:  # the carried state must outlive the graph's output buffers
            new_state = new_state.clone()
        wce, wsum = weighted_ce(logits, batch["target"], batch["weight"])
        if self.model.training and self.cfg.data.task != "text":
            self.answer_acc = answer_accuracy(logits, batch["target"], batch["weight"])
        return wce, wsum, new_state

    def aux_collector(self) -> contextlib.AbstractContextManager:
        """The auxiliary-loss collector of a training forward with an auxiliary loss on; else a context that
        yields None (validation and evaluation compute none)."""
        if not (self.model.training and self.aux_weights):
            return contextlib.nullcontext()
        return aux_losses.collect("diversity" in self.aux_weights, "reconstruction" in self.aux_weights)

    # --- training -------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._t_last = time.perf_counter()
        self.apply_optimizer_config()

    def apply_optimizer_config(self) -> None:
        """Make the optimizer and LR schedule follow this run's config. On a resume Lightning restores
        them from the checkpoint, with the old run's lr, weight decay, betas, eps and the old schedule's
        current LR; ``resume=... train.lr=...`` or a new ``max_steps``/``warmup_steps``/``schedule``
        must take effect from the first resumed step (the moments and the step count are kept)."""
        if self._trainer is None or not self.trainer.optimizers:
            return
        t = self.cfg.train
        opt = self.trainer.optimizers[0]
        step = self.global_step  # optimizer steps done: the next one runs at factor(step)
        for group, wanted in zip(opt.param_groups, self.param_groups(), strict=True):
            group["weight_decay"] = wanted["weight_decay"]
            group["initial_lr"] = t.lr
            group["lr"] = t.lr * t.lr_factor_at(step)
            if t.optimizer == "adamw":
                group["betas"], group["eps"] = tuple(t.betas), t.eps
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [t.lr] * len(opt.param_groups)

    def train_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """One training micro-step's loss (no Trainer needed): applies the RSP schedule, draws the
        model's randomness from the step-keyed generator, carries/resets the stateful state. The LM loss, plus
        the weighted auxiliary losses when they are on (the LM loss alone is ``last_lm_loss``)."""
        self.set_rsp_prob()
        stateful = self.cfg.data.stateful
        state = None if (not stateful or self._new_episode(batch)) else self.carried
        with self.step_rng():
            wce, wsum, new_state = self._run(batch, state, stateful)
        self.carried = new_state
        self.micro_step += 1
        self.last_weight = wsum.detach()
        loss = wce / wsum.clamp_min(1e-8)
        self.last_lm_loss = loss.detach()
        for key, weight in self.aux_weights.items():
            loss = loss + weight * self.aux_values[key]
        return loss

    def check_finite(self, loss: torch.Tensor) -> None:
        """Raise :class:`Diverged` at the first non-finite training loss, before its backward pass (so the
        weights and the last checkpoint stay those of the step before). With several ranks every rank
        raises at the same step (one rank's NaN reaches all through the gradients anyway)."""
        value = float(loss.detach())
        bad = not math.isfinite(value)
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise Diverged(self.global_step + 1, value)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.train_loss(batch)
        self.check_finite(loss)
        rsp = self.rsp.prob
        n_tok = batch["input"].numel() * self.trainer.world_size
        self.tokens_seen += n_tok
        self._step_tokens += n_tok
        opt = self.optimizers()
        # "step" is Lightning's reserved key for the x-axis: optimizer steps done after this one
        self.log("step", _f64(self.global_step + 1))
        # train/loss is the weighted mean over the optimizer step's micro-batches (gradient
        # accumulation), train/weight their summed weight; a window without targets (possible when
        # stateful) has weight 0
        w = self.last_weight
        if self._acc_step is None or self._acc_step[2] != self.global_step:
            self._acc_step = (torch.zeros_like(w), torch.zeros_like(w), self.global_step)
        lm = self.last_lm_loss
        lw_sum, w_sum = self._acc_step[0] + lm * w, self._acc_step[1] + w
        self._acc_step = (lw_sum, w_sum, self.global_step)
        self.log("train/loss", lw_sum / w_sum if w_sum > 0 else lm, prog_bar=True)
        self.log("train/weight", w_sum)
        if self.last_weight > 0:
            self.recent_losses.append(float(lm))
        if self.aux_weights:
            self.log_aux()
        # float64: Lightning would store plain numbers as float32 (token counts > 2**24 would round)
        self.log("train/lr", _f64(opt.param_groups[0]["lr"] if opt else 0.0))
        self.log("train/rsp_prob", _f64(rsp))
        self.log("train/seq_len", _f64(batch["input"].shape[1]))
        if self.answer_acc is not None:
            self.log("train/answer_acc", self.answer_acc)
        self.log("train/tokens", _f64(self.tokens_seen))
        return loss

    def log_aux(self) -> None:
        """Log each auxiliary loss (unweighted): the mean over the optimizer step's micro-batches so far."""
        if self._aux_step is None or self._aux_step[2] != self.global_step:
            self._aux_step = ({k: torch.zeros(()) for k in self.aux_weights}, 0, self.global_step)
        sums, n, _ = self._aux_step
        sums = {k: sums[k].to(v.device) + v.detach().float() for k, v in self.aux_values.items()}
        self._aux_step = (sums, n + 1, self.global_step)
        for key, total in sums.items():
            self.log(f"train/{key}_loss", total / (n + 1))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._t_last is not None and now > self._t_last:
            self.log("train/tokens_per_s", self._step_tokens / (now - self._t_last), prog_bar=True)
        self._t_last, self._step_tokens = now, 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if (self.global_step + 1) % self.cfg.train.log_every == 0:
            grads = [p.grad.detach().float().norm() for p in self.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.stack(grads).norm())
        # An optimizer step whose micro-batches hold no targets on any rank (stateful training: in
        # stateful recall every window before an episode's last) must change no weight. Its gradients
        # are zeros, but AdamW would still move the weights by its momentum and decay them. Without
        # gradients the optimizers skip every parameter; the LR schedule still counts the step.
        # Only stateful windows can lack targets: other runs pay no extra collective or sync here.
        acc = self._acc_step
        if self.cfg.data.stateful and acc is not None and acc[2] == self.global_step:
            total = self.trainer.strategy.reduce(acc[1].detach().float().clone(), reduce_op="sum")  # all ranks agree
            if float(total) <= 0:
                optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1

    # --- validation -----------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self.val_state = None
        self._val_sums = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        stateful = self.cfg.data.stateful
        state = None if (not stateful or self._new_episode(batch)) else self.val_state
        wce, wsum, self.val_state = self._run(batch, state, stateful)
        self._val_sums.append(torch.stack([wce.detach(), wsum.detach()]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        sums = torch.stack(self._val_sums).sum(0)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        loss = sums[0] / sums[1].clamp_min(1e-8)
        # already reduced over ranks: sync_dist averages equal values (and keeps Lightning quiet)
        self.log("step", float(self.global_step), sync_dist=True)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/bits_per_token", loss / LN2, sync_dist=True)
        self._val_sums = []
        self.val_state = None
        self._t_last = time.perf_counter()  # validation time does not count against tokens/s

    @torch.no_grad()
    def evaluate_loss(self, batches: Any) -> float:
        """Token-weighted loss over ``batches`` (eval mode, a carried state when stateful)."""
        was = self.training
        self.eval()
        total, weight, state = 0.0, 0.0, None
        try:
            for batch in batches:
                batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                stateful = self.cfg.data.stateful
                state = None if (not stateful or self._new_episode(batch)) else state
                wce, wsum, state = self._run(batch, state, stateful)
                total, weight = total + float(wce), weight + float(wsum)
        finally:
            self.train(was)
        return total / max(weight, 1e-8)

    # --- optimisation ---------------------------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        """Weight decay on matrices except the token embedding and the FAM prompt/prefix."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            exempt = p.dim() < 2 or name.startswith(("tok_emb.", "fam_prompt", "fam_prefix"))
            (no_decay if exempt else decay).append(p)
        wd = self.cfg.train.weight_decay
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.cfg.train
        if t.optimizer == "adamw":
            opt = torch.optim.AdamW(self.param_groups(), lr=t.lr, betas=tuple(t.betas), eps=t.eps)
        else:
            opt = torch.optim.Adafactor(self.param_groups(), lr=t.lr)
        factor = t.lr_factor_at

        def lr_lambda(step: int) -> float:  # a plain function: LambdaLR saves nothing of it
            return factor(step)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # --- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = {
            "version": 1,
            "config": self.cfg.to_dict(),
            "micro_step": int(self.micro_step),
            "tokens_seen": int(self.tokens_seen),
            "carried_state": state_to_dict(self.carried),
            "recent_losses": list(self.recent_losses),
            "skipped_steps": int(self.skipped_steps),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint.get("state_dict", {}), self.rsp)  # RSP buffers of older versions
        extra = checkpoint.get(CKPT_KEY) or {}
        self.micro_step = int(extra.get("micro_step", 0))
        self.tokens_seen = int(extra.get("tokens_seen", 0))
        self.recent_losses.extend(float(x) for x in extra.get("recent_losses", []))
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        single = self._trainer is None or self.trainer.world_size == 1
        self.carried = state_from_dict(extra.get("carried_state")) if single else None
