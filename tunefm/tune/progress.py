"""A Ray Tune callback that prints one compact progress line every few seconds.

Tune's own console tables list every trial (112 rows for fourfam) on each update;
this prints a single line instead:

    [00:01:40] 35/112 done (20 stopped early), 2 running | best val_acc 0.7180 (iaro2 lr=0.01 batch_size=8)

It also warns, once per node, when Ray gave trials a GPU that has no CUDA device behind
it (the trials then train on CPU), and each time a failed trial is retried from its last
checkpoint. A resumed search starts from the trials table written so far (`earlier`).
"""

from __future__ import annotations

import time
from typing import Callable

import pandas as pd
from ray.tune import Callback

from tunefm.engine.trial_config import epoch_limit


class ProgressLine(Callback):
    def __init__(self, total: int, max_epochs: int, echo: Callable[[str], None] = print,
                 interval_s: float = 10.0, metric: str = "val_acc", max_failures: int = 0,
                 earlier: pd.DataFrame | None = None):
        self.total, self.max_epochs, self.echo = total, max_epochs, echo
        self.interval_s, self.metric, self.max_failures = interval_s, metric, max_failures
        self.started = time.monotonic()
        self.last_print = float("-inf")  # the first step prints, however recently the machine started
        self.best: tuple[float, dict] | None = None
        self.epochs: dict[str, int] = {}
        self.finished: dict[str, str] = {}  # trial id -> TERMINATED or ERROR, as Tune reported it
        self.warned_nodes: set[str] = set()
        if earlier is not None and len(earlier):
            self.epochs = dict(zip(earlier["trial_id"], earlier["epochs"].astype(int)))
            ended = earlier[earlier["status"].isin(["TERMINATED", "ERROR"])]
            self.finished = dict(zip(ended["trial_id"], ended["status"]))
            if earlier["best_val_acc"].notna().any() and metric == "val_acc":
                top = earlier.loc[earlier["best_val_acc"].idxmax()]
                self.best = (float(top["best_val_acc"]), top.to_dict())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs[trial.trial_id] = int(result.get("epoch", 0))  # the trainable's count: right after a resume too
        self.warn_cpu_fallback(trial.trial_id, result)
        value = result.get(self.metric)
        if value is not None and (self.best is None or value > self.best[0]):
            self.best = (value, trial.config)

    def warn_cpu_fallback(self, trial_id: str, result: dict) -> None:
        node = result.get("node_ip") or result.get("node_id")
        if result.get("gpu_ids") and result.get("device") == "cpu" and node not in self.warned_nodes:
            self.warned_nodes.add(node)
            self.echo(f"Warning: Ray gave trial {trial_id} GPU {result['gpu_ids']} on node {node}, but CUDA "
                      f"is not available there; its trials on that node train on CPU")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.echo(f"Warning: trial {trial.trial_id} ({trial.config.get('model')} lr={trial.config.get('lr')} "
                  f"batch_size={trial.config.get('batch_size')}) failed: {last_error(trial)}; retrying from "
                  f"its last checkpoint (retry {trial.num_failures} of {self.max_failures})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished[trial.trial_id] = "TERMINATED"

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finished[trial.trial_id] = "ERROR"

    def line(self, trials) -> str:
        # Finished trials as Tune reported them: an interrupted search marks the trials it stops TERMINATED.
        done = [t for t in trials if t.trial_id in self.finished]
        stopped = sum(1 for t in done if self.finished[t.trial_id] == "TERMINATED"
                      and self.epochs.get(t.trial_id, 0) < epoch_limit(t.config, self.max_epochs))
        errors = sum(1 for t in done if self.finished[t.trial_id] == "ERROR")
        running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in self.finished)
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self.started))
        text = f"[{elapsed}] {len(done)}/{self.total} done ({stopped} stopped early"
        text += f", {errors} failed)" if errors else ")"
        text += f", {running} running"
        if self.best:
            value, config = self.best
            text += (f" | best {self.metric} {value:.4f} ({config.get('model')} lr={config.get('lr')} "
                     f"batch_size={config.get('batch_size')})")
        return text

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last_print >= self.interval_s:
            self.last_print = time.monotonic()
            self.echo(self.line(trials))

    def on_experiment_end(self, trials, **info):
        if all(t.trial_id in self.finished for t in trials):  # else interrupted: the search says so itself
            self.echo(self.line(trials))


def last_error(trial) -> str:
    """The first line of the trial's latest failure, from the error file Tune keeps for it."""
    try:
        with open(trial.error_file) as f:
            entries = f.read().split("Failure # ")
        lines = [line.strip() for line in entries[-1].splitlines()[1:] if line.strip()]
        return lines[0] if lines else "unknown error"
    except (OSError, TypeError, AttributeError):
        return "unknown error"
