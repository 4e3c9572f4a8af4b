"""Why ``famlab train`` stops before ``train.max_steps``, and its exit statuses.

==== ===============================================================================================
0    trained to ``max_steps``; ``final_metrics.json`` written after the final checkpoint
2    bad settings, or ``resume=`` of a missing or unreadable checkpoint (nothing was started: no run dir)
3    :class:`Diverged`: a non-finite training loss. Deterministic (the same config and seed diverge at the
     same step again); ``final_metrics.json`` holds ``"stopped": "<reason>"`` and ``"stop_kind": "diverged"``
4    :class:`CheckpointSaveFailed`: a checkpoint could not be written (disk full, I/O error). Not a property of
     the config: the previous checkpoint is intact and ``resume=<run dir>`` continues from it; no
     ``final_metrics.json`` is written (the run is not complete)
5    :class:`Interrupted`: SIGUSR1, SIGUSR2 (SLURM's warning before a time limit, which ``famlab sweep
     submit`` asks for) or SIGTERM (a cancelled or preempted SLURM job) asked the run to stop: it saved
     ``step########.ckpt`` and ``last.ckpt`` of its last
     optimizer step, and ``resume=<run dir>`` continues from there; no ``final_metrics.json``
==== ===============================================================================================

Each prints one ``famlab: error: ...`` line on stderr.
"""

from __future__ import annotations

EXIT_BAD_CONFIG = 2
EXIT_DIVERGED = 3
EXIT_SAVE_FAILED = 4
EXIT_INTERRUPTED = 5


class TrainingStopped(RuntimeError):
    """Training stopped early; ``exit_status`` is what ``famlab train`` exits with, ``kind`` a stable name."""

    exit_status = 1
    kind = "stopped"


class Diverged(TrainingStopped):
    """The training loss of optimizer step ``step`` (1-based, as ``step`` in metrics.jsonl) is ``value``, not finite."""

    exit_status = EXIT_DIVERGED
    kind = "diverged"

    def __init__(self, step: int, value: float):
        self.step, self.value = int(step), float(value)
        super().__init__(f"non-finite training loss ({self.value}) at step {self.step}")


class CheckpointSaveFailed(TrainingStopped):
    """A checkpoint could not be written; the previous file at that path is kept."""

    exit_status = EXIT_SAVE_FAILED
    kind = "checkpoint_save_failed"


class Interrupted(TrainingStopped):
    """A signal asked the run to stop; it saved the checkpoint of optimizer step ``step`` first."""

    exit_status = EXIT_INTERRUPTED
    kind = "interrupted"

    def __init__(self, signal_name: str, step: int):
        self.signal_name, self.step = signal_name, int(step)
        super().__init__(f"{signal_name}: checkpoint of step {self.step} saved; resume=<run dir> continues")
