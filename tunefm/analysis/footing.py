"""Which trials a comparison includes, and at which epochs.

Under early stopping trials train for different numbers of epochs: a trial ASHA stopped
after one epoch has a first-epoch accuracy and a one-epoch cost. Comparing it with
trials that trained to the end makes it look cheap because it was stopped, not because
its configuration is cheap. So the Pareto front compares trials on an equal footing:

    basis = footing.pareto_basis(trials, epochs, "best_val_acc", "time_per_epoch_s")
    basis.compared    # the rows the front is computed over
    basis.left_out    # the trials it leaves out, each with `why`
    basis.text        # "the 35 trials that trained all 3 epochs, each up to its last epoch"

By default that is the trials that ran to the end. When fewer than MIN_COMPARED did (a
search with aggressive early stopping), every trial is compared at the highest epoch
that at least MIN_COMPARED trials reached (or all there are), its figures recomputed
from its first epochs (`at_epoch`). `include_stopped` compares every trial at its own
last epoch, as if stopping were a property of the configuration.

`scope_text` says the same for sections that keep every trial (best, grid, overfitting,
importance). Pure pandas: no Ray, no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tunefm.run.columns import INTERRUPTED, TRIAL_FACTS
from tunefm.run.trial_summary import summary_row
from tunefm.stopping import rules
from tunefm.stopping.objectives import Objective, parse

MIN_COMPARED = 5
# Figures that exist only after training (measured on the test set from the best checkpoint):
# they have no value at an earlier epoch.
AFTER_TRAINING = ("test_acc", "test_loss")
# Costs that add up over the epochs a trial trained: early stopping lowers them.
CUMULATIVE_COSTS = ("total_time_s", "gpu_seconds")


@dataclass
class Basis:
    """The trials a comparison includes (`compared`) and leaves out (`left_out`, with `why`)."""

    compared: pd.DataFrame
    left_out: pd.DataFrame
    epoch: int | None  # every compared trial's figures up to this epoch; None: up to its own last
    mode: str  # "ran to the end", "at epoch", "all trials"
    text: str  # which trials, at which epochs, in words

    def record(self) -> dict:
        """The basis as plain data (JSON, CSV, HTML)."""
        reasons = self.left_out["why"].value_counts().to_dict() if len(self.left_out) else {}
        return {"trials": len(self.compared), "basis": self.mode, "up_to_epoch": self.epoch,
                "left_out": len(self.left_out), "left_out_why": "; ".join(f"{n} {why}" for why, n in reasons.items())}


def stopped(trials: pd.DataFrame) -> pd.Series:
    """Each trial's stopped_early as a plain bool (False where a table has none)."""
    if "stopped_early" not in trials:
        return pd.Series(False, index=trials.index)
    return trials["stopped_early"].fillna(False).astype(bool)


def ran_to_end(trials: pd.DataFrame) -> pd.Series:
    """Trials that ended normally after all their epochs (not stopped early, not failed or running)."""
    return (trials["status"] == "TERMINATED") & ~stopped(trials)


def run_objectives(info: dict) -> tuple[Objective, ...]:
    """The objectives a run's search stopped its trials on (run.json's --objectives)."""
    return parse((info.get("options") or {}).get("objectives") or "val_acc:max")


def stopping_rule(info: dict) -> str:
    """The rule that stopped a run's trials, for the words: 'ASHA', or 'MO-ASHA' for a search
    with several --objectives."""
    return rules.label(run_objectives(info))


def stopped_why(row: pd.Series, rule: str = "ASHA") -> str:
    """'stopped early by ASHA at rung 3' (the rung where the run recorded one)."""
    rung = row.get("stopped_at_rung")
    return f"stopped early by {rule}" + ("" if rung is None or pd.isna(rung) else f" at rung {int(rung)}")


def why_not_compared(row: pd.Series, limit: int | None = None, needs: tuple[str, ...] = (), rule: str = "ASHA") -> str:
    """Why a trial is not compared: a figure it lacks (of `needs`), or its figures are not on
    the footing of the ones that ran to the end (or reached epoch `limit`)."""
    missing = [column for column in needs if pd.isna(row[column])]
    if missing:
        return f"no {missing[0]}"
    if limit is not None:
        return f"reached fewer than {limit} epochs"
    if row["status"] == "TERMINATED":
        return stopped_why(row, rule)
    return {"ERROR": "failed", INTERRUPTED: "interrupted"}.get(row["status"], "still running")


def at_epoch(trials: pd.DataFrame, epochs: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """The trials that reached `epoch`, their figures recomputed from their first `epoch`
    epochs (best val acc so far, time so far, ...). Test-set figures become NaN: they were
    measured after training. Their own status, stopped_early and epochs stay."""
    reached = trials[trials["epochs"] >= epoch]
    early = epochs[(epochs["epoch"] <= epoch) & epochs["trial_id"].isin(reached["trial_id"])]
    histories = {tid: g.sort_values("epoch").to_dict("records") for tid, g in early.groupby("trial_id", sort=False)}
    rows = []
    for _, trial in reached.iterrows():
        recomputed = summary_row(trial.to_dict(), histories.get(trial["trial_id"], []), [], epoch)
        figures = {k: v for k, v in recomputed.items() if k not in ("trial_id", "status", "stopped_early", "epochs",
                                                                     "retries", *TRIAL_FACTS)}
        rows.append({**trial.to_dict(), **figures, **dict.fromkeys(AFTER_TRAINING, float("nan"))})
    table = pd.DataFrame(rows, columns=list(trials.columns)).astype(trials.dtypes.to_dict(), errors="ignore")
    if "gpu_seconds" in table:  # queries.with_cost's GPU time, of the time so far
        table["gpu_seconds"] = table["total_time_s"] * table["gpu_fraction"]
    return table


def pareto_basis(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, cost: str,
                 include_stopped: bool = False, rule: str = "ASHA") -> Basis:
    """The trials a Pareto front of `metric` against `cost` compares (see the module's docstring).
    `trials` must already carry `cost` (queries.with_cost); `rule`: what stopped trials early."""
    scored = trials[trials[metric].notna() & trials[cost].notna()]
    limit, needs = int(scored["epochs"].max()) if len(scored) else 0, (metric, cost)
    if include_stopped:
        compared = scored.assign(up_to_epoch=scored["epochs"])
        count = int(stopped(compared).sum())
        text = (f"all {_trials(len(compared))}, each up to its last epoch"
                + (f" ({count} stopped early by {rule}, marked *: their figures come from fewer epochs)"
                   if count else ""))
        return Basis(compared, _left_out(trials, compared, None, needs, rule), None, "all trials", text)
    finished = scored[ran_to_end(scored)]
    needed = min(MIN_COMPARED, len(scored))
    why_not = None  # why there is no earlier epoch to fall back to, when there is none
    if len(finished) < needed:
        if metric in AFTER_TRAINING:
            why_not = f"{metric} is measured after training, so there is no earlier epoch to compare at"
        else:
            epoch = max(e for e in range(1, limit + 1) if (scored["epochs"] >= e).sum() >= needed)
            recomputed = at_epoch(scored, epochs, epoch)
            compared = recomputed[recomputed[metric].notna() & recomputed[cost].notna()].assign(up_to_epoch=epoch)
            if len(compared) >= needed:
                text = (f"only {len(finished)} of {len(scored)} trials trained all {limit} epochs, too few to "
                        f"compare: the {_trials(len(compared))} that reached epoch {epoch}, each up to epoch {epoch}")
                return Basis(compared, _left_out(trials, compared, epoch, needs, rule), epoch, "at epoch", text)
            # a cost some trials never get, such as time_to_90_train_acc_s, is rarer at an earlier epoch
            why_not = f"fewer than {needed} trials have a {cost} up to epoch {epoch}, the last {needed} reached"
    compared = finished.assign(up_to_epoch=finished["epochs"])
    trained = _epochs(compared["epochs"]) if len(compared) else "their epochs"
    trained = trained if compared["epochs"].nunique() <= 1 else f"their {trained}"  # configs with their own counts
    text = (f"the {_trials(len(compared))} that trained all {trained}, each up to its last epoch"
            if len(compared) != len(scored) or len(compared) == 0 else
            f"all {_trials(len(compared))} (every one trained all {trained})")
    return Basis(compared, _left_out(trials, compared, None, needs, rule), None, "ran to the end",
                 text + (f"; {why_not}" if why_not else ""))


def _trials(count: int) -> str:
    return f"{count} trial{'' if count == 1 else 's'}"


def _epochs(counts: pd.Series) -> str:
    """'1 epoch', '3 epochs', or '1-2 epochs' for a range of epoch counts."""
    low, high = int(counts.min()), int(counts.max())
    return f"{low} epoch{'' if low == 1 else 's'}" if low == high else f"{low}-{high} epochs"


def _left_out(trials: pd.DataFrame, compared: pd.DataFrame, limit: int | None, needs: tuple[str, ...],
              rule: str = "ASHA") -> pd.DataFrame:
    """Trials with at least one epoch that `compared` leaves out, each with why."""
    rest = trials[~trials["trial_id"].isin(compared["trial_id"]) & trials["epochs"].fillna(0).gt(0)]
    return rest.assign(why=[why_not_compared(row, limit, needs, rule) for _, row in rest.iterrows()])


def stopped_text(trials: pd.DataFrame, rule: str = "ASHA") -> str:
    """'77 of 112 stopped early by ASHA (after 1-2 epochs)', or '' when none was."""
    early = trials[stopped(trials)]
    if early.empty:
        return ""
    return f"{len(early)} of {len(trials)} stopped early by {rule} (after {_epochs(early['epochs'])})"


def scope_text(trials: pd.DataFrame, at: str, rule: str = "ASHA") -> str:
    """Which trials a section that keeps every trial includes, and at which epoch (`at`):
    'all 112 trials, each at its best epoch; 77 of 112 stopped early by ASHA (after 1-2
    epochs), so their figures come from fewer epochs'."""
    text = f"all {len(trials)} trials, each at {at}"
    stopped = stopped_text(trials, rule)
    return text + (f"; {stopped}, so their figures come from fewer epochs" if stopped else "")
