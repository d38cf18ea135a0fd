"""A Ray Tune callback that prints one compact progress line every few seconds.

Tune's own console tables list every trial (112 rows for fourfam) on each update;
this prints a single line instead:

    [00:01:40] 35/112 done (20 stopped early), 2 running | best val_acc 0.7180 (iaro2 lr=0.01 batch_size=8)

It also warns, once per node, when Ray gave trials a GPU that has no CUDA device behind
it (the trials then train on CPU).
"""

from __future__ import annotations

import time
from typing import Callable

from ray.tune import Callback

from tunefm.store import epoch_limit


class ProgressLine(Callback):
    def __init__(self, total: int, max_epochs: int, echo: Callable[[str], None] = print,
                 interval_s: float = 10.0, metric: str = "val_acc"):
        self.total, self.max_epochs, self.echo = total, max_epochs, echo
        self.interval_s, self.metric = interval_s, metric
        self.started = time.monotonic()
        self.last_print = 0.0
        self.best: tuple[float, dict] | None = None
        self.epochs: dict[str, int] = {}
        self.warned_nodes: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs[trial.trial_id] = int(result.get("training_iteration", 0))
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

    def line(self, trials) -> str:
        done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        stopped = sum(1 for t in done if t.status == "TERMINATED" and self.epochs.get(t.trial_id, 0) < epoch_limit(t.config, self.max_epochs))
        errors = sum(1 for t in done if t.status == "ERROR")
        running = sum(1 for t in trials if t.status == "RUNNING")
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
        self.echo(self.line(trials))
