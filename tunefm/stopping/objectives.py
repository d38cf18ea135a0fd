"""What a stopping rule judges, and a multi-objective searcher optimizes:
`--objectives val_acc:max,time_per_epoch_s:min`.

    objectives = parse("val_acc:max,params:min")
    values(objectives, history)      # (0.83, 101770.0): each at the trial's latest epoch
    scores(objectives, history)      # (0.83, -101770.0): higher is better, NaN is worst

An objective names a column and a direction. An epoch column (val_acc, train_loss,
epoch_time_s, ...) is the value the trial reported at that epoch. A trial column
(time_per_epoch_s, params, best_val_acc, ...) is the trial's figure over its epochs so
far, computed by `trial_summary.summary_row` exactly as trials.parquet computes it at the
end. test_acc and test_loss are measured after training, so no rule can read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tunefm.errors import UserError
from tunefm.run import trial_summary
from tunefm.run.columns import EPOCH_METRICS

EPOCH_COLUMNS = tuple(EPOCH_METRICS)
TRIAL_COLUMNS = ("params", "best_val_acc", "val_loss_at_best", "min_train_loss", "final_train_loss",
                 "final_val_loss", "overfit_gap", "time_per_epoch_s", "total_time_s", "time_to_90_train_acc_s")
COLUMNS = EPOCH_COLUMNS + TRIAL_COLUMNS
DIRECTIONS = ("max", "min")
DEFAULT_MULTI = "val_acc:max,time_per_epoch_s:min"  # seed 000's question: accuracy against seconds per epoch


@dataclass(frozen=True)
class Objective:
    column: str
    direction: str  # "max" or "min"

    def __str__(self) -> str:
        return f"{self.column}:{self.direction}"

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "max" else -1.0


def parse(text: str) -> tuple[Objective, ...]:
    """'val_acc:max,params:min' -> the objectives, in order; a UserError names what is wrong."""
    found: list[Objective] = []
    for part in str(text).split(","):
        column, sep, direction = part.strip().partition(":")
        column, direction = column.strip(), direction.strip()
        if not column:
            raise UserError(f"--objectives takes COLUMN:max|min[,COLUMN:max|min...], got {text!r}")
        if column not in COLUMNS:
            extra = " (measured after training; no rule can read it)" if column in ("test_acc", "test_loss") else ""
            raise UserError(f"--objectives: {column!r} names no epoch or trial column{extra}; valid: "
                            f"{', '.join(COLUMNS)}")
        if not sep or direction not in DIRECTIONS:
            raise UserError(f"--objectives: give {column} a direction, {column}:max or {column}:min, "
                            f"got {part.strip()!r}")
        if any(o.column == column for o in found):
            raise UserError(f"--objectives names {column} twice")
        found.append(Objective(column, direction))
    return tuple(found)


def text(objectives: Sequence[Objective]) -> str:
    return ",".join(str(o) for o in objectives)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Histories:
    """Each trial's reported rows in epoch order, as the driver takes them in: what `values`
    reads. A trial retried from a checkpoint reports its epochs again; they replace the old."""

    def __init__(self):
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def add(self, trial_id: str, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The trial's rows up to and including `row` (one with an `epoch` replaces that epoch on)."""
        rows = self._rows.setdefault(trial_id, [])
        if "epoch" in row:
            del rows[int(row["epoch"]) - 1:]
        rows.append(dict(row))
        return rows

    def drop(self, trial_id: str) -> None:
        self._rows.pop(trial_id, None)


def values(objectives: Sequence[Objective], history: Sequence[Mapping[str, Any]],
           facts: Mapping[str, Any] | None = None) -> tuple[float, ...]:
    """Each objective at the last row of `history` (epoch rows, in order). `facts`: the
    trial's constant facts (params, ...) where its rows lack them (epochs.parquet's do)."""
    last = history[-1]
    summary: dict[str, Any] | None = None
    out = []
    for objective in objectives:
        if objective.column in EPOCH_COLUMNS:
            out.append(_number(last.get(objective.column)))
            continue
        if summary is None:
            trial = {"trial_id": "", "status": "RUNNING", **(facts if facts is not None else last)}
            rows = [{**dict.fromkeys(EPOCH_METRICS, math.nan), **row} for row in history]
            summary = trial_summary.summary_row(trial, rows, [], max_epochs=len(history))
        out.append(_number(summary.get(objective.column)))
    return tuple(out)


def scores(objectives: Sequence[Objective], history: Sequence[Mapping[str, Any]],
           facts: Mapping[str, Any] | None = None) -> tuple[float, ...]:
    """`values` turned so that higher is better; a missing value (NaN) ranks below every other."""
    return tuple(-math.inf if math.isnan(v) else o.sign * v
                 for o, v in zip(objectives, values(objectives, history, facts)))
