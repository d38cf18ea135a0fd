"""A Ray Tune callback that writes each trial's curves as TensorBoard events in the run folder.

    tensorboard --logdir results/<run>/tensorboard

One event folder per trial (`tensorboard/<trial_id>/`), written by the driver as each
epoch arrives and flushed at once, so TensorBoard shows a running search live, and on
the driver's disk even when `--storage` puts the checkpoints in a bucket. Tune's own
TensorBoard logger is left out (`search.make_callbacks`): it wrote the same scalars
again into `tune/<trial_id>/`, a staging folder copied to the storage every few minutes.

Scalars per epoch: loss/train, loss/val, accuracy/train, accuracy/val, time/epoch_s.
When a trial ends, its config and best val accuracy go to the HParams tab.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
           "accuracy/val": "val_acc", "time/epoch_s": "epoch_time_s"}  # tag -> reported metric


class TensorBoardWriter(Callback):
    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writers: dict[str, object] = {}

    def _writer(self, trial_id: str):
        if trial_id not in self.writers:
            from tensorboardX import SummaryWriter

            self.writers[trial_id] = SummaryWriter(str(self.log_dir / trial_id))
        return self.writers[trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        writer = self._writer(trial.trial_id)
        for tag, metric in SCALARS.items():
            if result.get(metric) is not None:
                writer.add_scalar(tag, result[metric], global_step=int(result["epoch"]))
        writer.flush()

    def _close(self, trial) -> None:
        writer = self.writers.pop(trial.trial_id, None)
        if writer is None:
            return
        from tensorboardX.summary import hparams

        config = {k: v for k, v in trial.config.items() if isinstance(v, (int, float, str, bool))}
        # A writer exists only once a result did; Tune keeps each metric's running max.
        metrics = {"hparam/best_val_acc": trial.metric_analysis["val_acc"]["max"]}
        # Into the trial's own event file: SummaryWriter.add_hparams would open a second
        # writer, whose file can get the same name (it is made from the current second).
        for summary in hparams(config, metrics):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value)
        writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial)

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            self._close(trial)
