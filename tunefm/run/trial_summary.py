"""Per-trial summaries of epoch rows: one trials.parquet row per trial.

    trials = trial_summary.summarize_trials(epochs, trial_states, max_epochs=10)
    row = trial_summary.summary_row(state, history, config_columns, max_epochs=10)

What a trial's row says about it (best epoch, lowest train loss, overfitting gap, time
per epoch, time to 90% train accuracy) is decided here; `writer.RunWriter` calls
`summary_row` for every trial that changed since its last flush.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from tunefm.engine.trial_config import epoch_limit, is_missing
from tunefm.run.columns import SUMMARY_COLUMNS, TRAIN_ACC_TARGET, TRIAL_FACTS, TRIAL_STATE


def config_columns(trials: pd.DataFrame) -> list[str]:
    """The columns of a trials table that are config keys (model, lr, batch_size, ...)."""
    known = {*TRIAL_STATE, *SUMMARY_COLUMNS, *TRIAL_FACTS}
    return [c for c in trials.columns if c not in known]


def summarize_trials(epochs: pd.DataFrame, trials: pd.DataFrame, max_epochs: int) -> pd.DataFrame:
    """One row per trial from its epoch rows (`summary_row` for each trial).

    `trials` has one row per trial: trial_id, status, the config columns and the
    trial facts (params, node_id, ...). A trial with no epoch yet keeps null metrics.
    """
    config_columns = [c for c in trials.columns if c not in (*TRIAL_STATE, *TRIAL_FACTS)]
    histories = ({tid: g.sort_values("epoch").to_dict("records") for tid, g in epochs.groupby("trial_id", sort=False)}
                 if len(epochs) else {})
    rows = [summary_row(trial._asdict(), histories.get(trial.trial_id, []), config_columns, max_epochs)
            for trial in trials.itertuples(index=False)]
    return summary_dtypes(pd.DataFrame(rows))


def _number(value: Any) -> float:
    return math.nan if is_missing(value) else float(value)


def summary_row(trial: Mapping[str, Any], history: list[Mapping[str, Any]], config_columns: list[str],
                max_epochs: int) -> dict[str, Any]:
    """One trial's trials.parquet row, from its state and config (`trial`) and its epoch
    rows in epoch order. Plain Python: the writer calls it for every changed trial on
    every flush.

    `stopped_early` means the scheduler ended the trial before `max_epochs` (or before
    the trial's own `max_epochs` config key, where it has one); `stopped_at_rung` is the
    rung the stopping rule stopped it at, where it said (runs before it did not). The best epoch is the
    first at the best val_acc. `time_to_90_train_acc_s` is the trial's time (Tune's
    time_total_s) at the end of the first epoch whose train accuracy reached 90%, null
    if none did.
    """
    n_epochs = len(history)
    retries = trial.get("retries")
    stopped_early = trial["status"] == "TERMINATED" and n_epochs < epoch_limit(trial, max_epochs)
    rung = trial.get("stopped_at_rung")
    row = {"trial_id": trial["trial_id"], "status": trial["status"], "stopped_early": stopped_early,
           "stopped_at_rung": int(rung) if stopped_early and not is_missing(rung) else None,
           "epochs": n_epochs, "retries": 0 if is_missing(retries) else int(retries),
           **{c: trial.get(c) for c in config_columns}}
    metrics: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS, math.nan)
    metrics.update({c: trial.get(c) for c in TRIAL_FACTS})
    if history:
        last = history[-1]
        metrics.update(
            final_train_loss=_number(last["train_loss"]), final_val_loss=_number(last["val_loss"]),
            overfit_gap=_number(last["val_loss"]) - _number(last["train_loss"]),
            time_per_epoch_s=_mean(_number(r["epoch_time_s"]) for r in history),
            total_time_s=max((t for t in (_number(r["time_total_s"]) for r in history) if not math.isnan(t)),
                             default=math.nan),
        )
        val_acc = [_number(r["val_acc"]) for r in history]
        measured = [i for i, v in enumerate(val_acc) if not math.isnan(v)]
        if measured:
            best_at = max(measured, key=lambda i: (val_acc[i], -i))  # the first epoch at the best value
            metrics.update(best_val_acc=val_acc[best_at], best_epoch=int(history[best_at]["epoch"]),
                           val_loss_at_best=_number(history[best_at]["val_loss"]))
        reached = next((r for r in history if _number(r["train_acc"]) >= TRAIN_ACC_TARGET), None)
        if reached is not None:
            metrics["time_to_90_train_acc_s"] = _number(reached["time_total_s"])
        train_loss = [_number(r["train_loss"]) for r in history]
        finite = [i for i, v in enumerate(train_loss) if not math.isnan(v)]  # a diverged trial has only NaN
        if finite:
            lowest = min(finite, key=lambda i: (train_loss[i], i))
            metrics.update(min_train_loss=train_loss[lowest], min_train_loss_epoch=int(history[lowest]["epoch"]))
    row.update({c: metrics[c] for c in SUMMARY_COLUMNS})
    return row


def _mean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def summary_dtypes(table: pd.DataFrame) -> pd.DataFrame:
    """The trials table's column types, whatever rows (or none) it was built from."""
    if len(table) and "stopped_at_rung" not in table.columns and "stopped_early" in table.columns:
        # runs written before the stopping rule recorded its rungs
        table.insert(table.columns.get_loc("stopped_early") + 1, "stopped_at_rung", None)
    if len(table):
        for column in ("best_epoch", "min_train_loss_epoch", "params", "threads", "group_size", "stopped_at_rung"):
            table[column] = table[column].astype("Int64")
        for column in ("test_acc", "test_loss", "gpu_fraction", "time_to_90_train_acc_s", "started_at"):
            table[column] = table[column].astype("float64")
    return table
