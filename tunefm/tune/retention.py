"""Which checkpoints a run keeps on disk: `--keep-checkpoints best` (the default) or `all`.

    best  while a trial runs: its best checkpoint (by val_acc) and its latest, as
          resume needs them;
          when it ends: its best only (the latest goes unless it is the best);
          after the search's test evaluation: the best of each model's top KEEP_TOP
          configurations (every seed of each, ranked as `tunefm evaluate --test-top`
          ranks them: by mean val_acc), so `tunefm evaluate --test-top 5` still works,
          and nothing of the other trials (but a failed trial's, which a resume
          retries from its latest checkpoint).
    all   every trial's best and latest.

run.json's "checkpoints" records the policy, the trials whose checkpoint was kept and
the megabytes freed; `tunefm evaluate` names the policy when a checkpoint is gone.
Checkpoints are read and deleted through pyarrow's file systems, so `--storage s3://...`
is pruned the same way (`run/checkpoints.py` lists them). Runs in the driver: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import pyarrow.fs as pafs
from ray.tune import Callback

from tunefm.run import checkpoints, ranking
from tunefm.run.checkpoints import KEEP_TOP


@dataclass
class Freed:
    """What a pruning deleted and kept."""

    checkpoints: int = 0
    bytes: int = 0
    kept_checkpoints: int = 0
    kept_bytes: int = 0
    kept_trials: list[str] = field(default_factory=list)


def mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


class Pruning:
    """The checkpoints one search deletes: as trials checkpoint and end (`callback`, a Tune
    callback) and, with policy "best", after the test evaluation (`after_search`).

    Tune itself deletes nothing (no CheckpointConfig.num_to_keep): with num_to_keep set it
    saves the whole experiment state after every trial checkpoint, a cost that grows with
    the study (tunefm's own deletion keeps the state's usual period; `resume.py` puts back
    a checkpoint a stale state names)."""

    def __init__(self, tune_dir: str, policy: str = "best", keep_top: int = KEEP_TOP):
        checkpoints.check_policy(policy)
        self.fs, self.tune_path = pafs.FileSystem.from_uri(tune_dir)
        self.policy = policy
        self.keep_top = keep_top
        self.freed = Freed()

    def keep_best_and(self, trial_id: str, best_epoch: int | None, latest: str | None) -> None:
        """Delete the trial's checkpoints but the newest of its best epoch and the folder `latest`
        (every one, with neither); what is kept is counted in `freed.kept_*`."""
        found = checkpoints.listing(self.fs, f"{self.tune_path}/{trial_id}")
        best = max((c.folder for c in found if best_epoch is not None and c.epoch == best_epoch),
                   default=None)  # a retried epoch checkpoints again: the newest copy
        for folder, size in ((c.folder, c.size) for c in found):
            if folder == best or (latest is not None and folder.rsplit("/", 1)[-1] == latest.rsplit("/", 1)[-1]):
                self.freed.kept_checkpoints += 1
                self.freed.kept_bytes += size
                continue
            try:
                self.fs.delete_dir(folder)
            except OSError:  # gone already: nothing to free
                continue
            self.freed.checkpoints += 1
            self.freed.bytes += size

    def callback(self, best_epoch: Callable[[str], int | None]):
        """A Tune callback: at each checkpoint, the trial keeps its best and this one (as resume
        needs); with policy "best", an ended trial keeps its best only. `best_epoch(trial_id)`:
        the first epoch at the trial's best val_acc so far (the Parquet writer's, which has
        seen this result: it is an earlier callback)."""
        pruning = self

        class CheckpointPruning(Callback):
            def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
                pruning.keep_best_and(trial.trial_id, best_epoch(trial.trial_id), checkpoint.path)

            def on_trial_complete(self, iteration, trials, trial, **info):
                best = best_epoch(trial.trial_id)
                if pruning.policy == "best" and best is not None:
                    pruning.keep_best_and(trial.trial_id, best, None)

        return CheckpointPruning()

    def after_search(self, trials) -> Freed:
        """Keep only the best checkpoint of each model's top `keep_top` configurations (`trials`:
        the run's trials table); delete every other checkpoint of the run."""
        kept = set(ranking.top_configs(trials, self.keep_top))
        self.freed.kept_trials = sorted(kept)
        self.freed.kept_checkpoints = self.freed.kept_bytes = 0  # what stays after this pass
        for row in trials.itertuples(index=False):
            if row.status == "ERROR":
                continue  # a resume retries it from its latest checkpoint
            best = None if row.trial_id not in kept or pd.isna(row.best_epoch) else int(row.best_epoch)
            self.keep_best_and(row.trial_id, best, None)
        return self.freed

    def describe(self) -> str:
        freed = self.freed
        return (f"Checkpoints: kept {freed.kept_checkpoints} ({mb(freed.kept_bytes)}), the best of each model's top "
                f"{self.keep_top} configuration(s); freed {mb(freed.bytes)} ({freed.checkpoints} checkpoints)")

    def record(self) -> dict:
        """run.json's "checkpoints"."""
        if self.policy != "best":
            return {"policy": self.policy}
        return {"policy": self.policy, "keep_top": self.keep_top, "kept_trials": self.freed.kept_trials,
                "kept_mb": round(self.freed.kept_bytes / 2**20, 1), "freed_mb": round(self.freed.bytes / 2**20, 1)}
