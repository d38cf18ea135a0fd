"""A Ray Tune callback that streams every reported epoch into the run's Parquet files.

It runs in the driver, so one writer sees every trial: rows are buffered, flushed
every few seconds, and always flushed when a trial ends; when the search ends its epoch
parts are merged into one (`RunWriter.compact`). A
trial that Tune restarts from its checkpoint after a failure counts one retry; a trial the
stopping rule ended keeps the rung it was stopped at.
"""

from __future__ import annotations

from typing import Mapping

from ray.tune import Callback

from tunefm.run.writer import RunWriter


class ParquetRecorder(Callback):
    def __init__(self, writer: RunWriter, stops: Mapping[str, int] | None = None):
        self.writer = writer
        self.stops = {} if stops is None else stops  # the stopping rule's {trial id: rung}, filled as it stops them

    def on_trial_start(self, iteration, trials, trial, **info):
        self.writer.set_status(trial.trial_id, trial.config, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.writer.add_epoch(trial.trial_id, trial.config, result)
        self.writer.maybe_flush()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.writer.set_status(trial.trial_id, trial.config, "TERMINATED",
                               stopped_at_rung=self.stops.get(trial.trial_id))
        self.writer.flush()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.writer.add_retry(trial.trial_id, trial.config)
        self.writer.flush()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.writer.set_status(trial.trial_id, trial.config, "ERROR")
        self.writer.flush()

    def on_step_end(self, iteration, trials, **info):
        self.writer.maybe_flush()

    def on_experiment_end(self, trials, **info):
        # Trials that never started still get their row. Tune's own status is not used:
        # when a search is interrupted it marks every trial it stops TERMINATED.
        for trial in trials:
            if not self.writer.knows(trial.trial_id):
                self.writer.set_status(trial.trial_id, trial.config, "PENDING")
        self.writer.compact()
