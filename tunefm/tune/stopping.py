"""The search's early stopping: a `tunefm.stopping` rule as a Ray Tune scheduler.

    scheduler = RuleScheduler(rules.for_objectives(objectives, max_epochs=9, grace_period=1,
                                                   reduction_factor=3))
    scheduler.stopped_at          # {trial id: rung}, read by the Parquet recorder

One scheduler for every searcher and for fused groups (each member is its own Tune trial):
ASHA on one objective, MO-ASHA on several. The rule sees each trial's reported rows as
they arrive, so an objective may be a trial column (time_per_epoch_s over the epochs so
far) as well as an epoch one. Tune does not save a scheduler with the experiment: a
resumed search replays the rows written so far (`replay`), and the rungs hold again what
they held when it stopped.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tunefm.run.columns import EPOCH_METRICS, TRIAL_FACTS
from tunefm.stopping import rules
from tunefm.stopping.objectives import Histories

KEPT = ("epoch", *EPOCH_METRICS, *TRIAL_FACTS)  # what a rule may read of a reported result


class RuleScheduler(FIFOScheduler):
    """Continue or stop each trial after each reported epoch, as `rule` decides."""

    def __init__(self, rule: rules.RungRule):
        super().__init__()
        self.rule = rule
        self._histories = Histories()

    @property
    def stopped_at(self) -> dict[str, int]:
        return self.rule.stopped_at

    def _decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        if "epoch" not in result:
            return TrialScheduler.CONTINUE
        history = self._histories.add(trial_id, {k: result[k] for k in KEPT if k in result})
        decision = self.rule.on_epoch(trial_id, history)
        return TrialScheduler.CONTINUE if decision == rules.CONTINUE else TrialScheduler.STOP

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._decide(trial.trial_id, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._histories.drop(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._histories.drop(trial.trial_id)

    def replay(self, epochs: pd.DataFrame, trials: pd.DataFrame | None = None) -> None:
        """Feed the rows of a search stopped earlier (epochs.parquet, with trials.parquet's
        facts such as params), in the order each trial reported them."""
        facts: dict[str, dict[str, Any]] = {}
        if trials is not None and len(trials):
            facts = trials.set_index("trial_id")[[c for c in TRIAL_FACTS if c in trials]].to_dict("index")
        for row in sorted(epochs.to_dict("records"), key=lambda row: _reported_at(row, facts)):
            self._decide(row["trial_id"], {**facts.get(row["trial_id"], {}), **row})

    def debug_string(self) -> str:
        return f"tunefm {self.rule.name} on {', '.join(map(str, self.rule.objectives))}"


def _reported_at(row: Mapping[str, Any], facts: Mapping[str, Mapping[str, Any]]) -> tuple:
    """When a written row was reported, for replaying rows in their order: the trial's start
    plus its time so far where the run says (else by trial, then epoch), so the rungs fill as
    they did."""
    start = facts.get(row["trial_id"], {}).get("started_at")
    at = (start or 0.0) + (row.get("time_total_s") or 0.0)
    return (at if at == at else 0.0, row["trial_id"], row["epoch"])  # at != at: NaN
