"""Replay a stopping rule on a run's recorded curves, without training: `tunefm replay RUN`.

    curves = Curves.of(store.load_run(run_dir))
    outcome = simulate(curves, Setting("asha", grace_period=1, reduction_factor=3,
                                       objectives=parse("val_acc:max"), concurrency=1))
    outcome.epochs, outcome.wall_s, outcome.regret, outcome.hypervolume_ratio

`replay_report` shows the outcomes. The trials start in the run's order (their trial ids: the order the searcher proposed
them), `concurrency` at a time. Each epoch takes the time it took in the run (the rise
of the trial's time_total_s, so a trial's start-up counts in its first epoch). At every
epoch the rule (`tunefm.stopping.rules`, the same code the search's scheduler runs)
decides; a trial it stops frees its slot for the next. With `concurrency` 1 the order of
events is the search's own, so the replay of ASHA on a `--no-early-stop` run gives every
trial the epochs a real ASHA search at `--concurrency 1` gives it.

What each setting is judged by:
- epochs: the epochs it trains, against the run's (the `as run` row: each trial its own epochs);
- wall_s: the simulated time until the last trial ends;
- the pick: the trial with the best val_acc seen in the epochs it trained, and its regret,
  the run's best val_acc minus the pick's;
- for several objectives, the hypervolume of the front of the trials it trains to the end,
  over the front of all of them, each objective at the trial's last epoch, scaled to [0, 1]
  over all trials and measured from a reference 0.1 below the worst.
A run whose own rule stopped trials can be replayed only where the replayed rule needs
none of the epochs they lack; otherwise a UserError names them.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import pandas as pd

from tunefm.engine.trial_config import epoch_limit
from tunefm.errors import UserError
from tunefm.run import store
from tunefm.run.columns import TRIAL_FACTS
from tunefm.run.trial_summary import config_columns
from tunefm.stopping import pareto, rules
from tunefm.stopping.objectives import Objective, parse, scores

SCHEDULERS = ("asha", "mo-asha", "none")
AS_RUN = "as run"  # the baseline: every trial trains the epochs it trained in the run
SWEEP_GRACE_PERIODS = (1, 2, 4)
SWEEP_REDUCTION_FACTORS = (2, 3, 4)
REFERENCE_BELOW = 0.1  # the hypervolume's reference point, below the worst of each scaled objective


@dataclass(frozen=True)
class Setting:
    scheduler: str  # asha (on the first objective) | mo-asha | none
    grace_period: int
    reduction_factor: int
    objectives: tuple[Objective, ...]
    concurrency: int = 1

    def label(self) -> str:
        if self.scheduler in ("none", AS_RUN):
            return self.scheduler
        return f"{self.scheduler} grace {self.grace_period} rf {self.reduction_factor}"


@dataclass
class Curves:
    """A run's curves, ready to replay: each trial's epoch rows and facts, in the run's order."""

    run_name: str
    max_epochs: int
    order: list[str]
    histories: dict[str, list[dict[str, Any]]]
    facts: dict[str, dict[str, Any]]
    limits: dict[str, int]  # the epochs each trial would train without early stopping
    trials: pd.DataFrame
    objectives: str | None  # the run's own --objectives

    @classmethod
    def of(cls, run: store.RunTables) -> "Curves":
        trials, epochs = run.trials, run.epochs
        if trials.empty or epochs.empty:
            raise UserError(f"run {run.run_dir.name} has no epochs to replay yet")
        max_epochs = int((run.info.get("study") or {}).get("max_epochs") or epochs["epoch"].max())
        configs = config_columns(trials)
        trials = trials.sort_values("trial_id").reset_index(drop=True)
        rows = epochs.sort_values(["trial_id", "epoch"])
        histories = {tid: g.to_dict("records") for tid, g in rows.groupby("trial_id", sort=False)}
        facts = {row["trial_id"]: {k: row.get(k) for k in TRIAL_FACTS if k in row}
                 for row in trials.to_dict("records")}
        limits = {row["trial_id"]: epoch_limit({k: row[k] for k in configs}, max_epochs)
                  for row in trials.to_dict("records")}
        order = [t for t in trials["trial_id"] if t in histories]
        options = run.info.get("options") or {}
        return cls(run.run_dir.name, max_epochs, order, histories, facts, limits, trials, options.get("objectives"))

    def time_of(self, trial_id: str, epoch: int) -> float:
        """Seconds the trial's `epoch` took in the run: the rise of its time_total_s (its
        epoch_time_s where that is missing)."""
        history = self.histories[trial_id]
        now = history[epoch - 1].get("time_total_s")
        before = history[epoch - 2].get("time_total_s") if epoch > 1 else 0.0
        if _measured(now) and _measured(before) and now >= before:
            return float(now - before)
        own = history[epoch - 1].get("epoch_time_s")
        return float(own) if _measured(own) else 0.0


def _measured(value: Any) -> bool:
    """A time the run recorded (not missing, not NaN)."""
    return value is not None and not math.isnan(value)


@dataclass
class Outcome:
    setting: Setting
    epochs: dict[str, int]  # trial id -> epochs the rule trains
    stopped_at: dict[str, int]  # trial id -> rung where it stopped it
    run_epochs: int
    wall_s: float
    pick: str | None  # the trial with the best val_acc seen
    pick_val_acc: float
    best: str | None  # the run's own best trial (all its epochs)
    best_val_acc: float
    hypervolume_ratio: float | None = None
    front: list[str] = field(default_factory=list)  # the rule's front (several objectives)
    full_front: list[str] = field(default_factory=list)

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs.values())

    @property
    def regret(self) -> float:
        return self.best_val_acc - self.pick_val_acc


def make_rule(curves: Curves, setting: Setting) -> rules.RungRule | None:
    if setting.scheduler in ("none", AS_RUN):
        return None
    judged = setting.objectives[:1] if setting.scheduler == "asha" else setting.objectives
    return rules.make(setting.scheduler, judged, curves.max_epochs, setting.grace_period, setting.reduction_factor)


def simulate(curves: Curves, setting: Setting) -> Outcome:
    """Run the rule over the curves as a search with `setting.concurrency` slots would."""
    if setting.concurrency < 1:
        raise UserError(f"--concurrency must be >= 1, got {setting.concurrency}")
    rule = make_rule(curves, setting)
    trained: dict[str, int] = {}
    lacking: dict[str, int] = {}  # trial -> the epoch the rule wants that the run lacks
    events: list[tuple[float, int, str, int]] = []  # (time, sequence, trial id, epoch it ends)
    waiting = list(reversed(curves.order))
    count, wall = 0, 0.0

    def start(trial_id: str, at: float) -> None:
        nonlocal count
        heapq.heappush(events, (at + curves.time_of(trial_id, 1), count, trial_id, 1))
        count += 1

    for _ in range(min(setting.concurrency, len(waiting))):
        start(waiting.pop(), 0.0)
    while events:
        at, _, trial_id, epoch = heapq.heappop(events)
        history = curves.histories[trial_id]
        trained[trial_id] = epoch
        decision = (rule.on_epoch(trial_id, history[:epoch], curves.facts[trial_id]) if rule is not None
                    else rules.CONTINUE)
        limit = len(history) if setting.scheduler == AS_RUN else curves.limits[trial_id]
        going_on = decision == rules.CONTINUE and epoch < limit
        if going_on and epoch >= len(history):
            lacking[trial_id] = epoch + 1
            going_on = False
        if going_on:
            heapq.heappush(events, (at + curves.time_of(trial_id, epoch + 1), count, trial_id, epoch + 1))
            count += 1
        else:
            wall = max(wall, at)
            if waiting:
                start(waiting.pop(), at)
    if lacking:
        raise UserError(lacking_message(curves, setting, lacking))
    return judged(curves, setting, trained, {} if rule is None else dict(rule.stopped_at), wall)


def lacking_message(curves: Curves, setting: Setting, lacking: dict[str, int]) -> str:
    shown = [f"{tid} trained {len(curves.histories[tid])} ({_status(curves, tid)}), the replay needs {needs}"
             for tid, needs in list(lacking.items())[:3]]
    more = f"; and {len(lacking) - 3} more" if len(lacking) > 3 else ""
    return (f"replaying {setting.label()} needs epochs run {curves.run_name} did not train: "
            f"{'; '.join(shown)}{more}. Replay a run made with --no-early-stop, or settings that stop these trials "
            f"no later than the run did")


def _status(curves: Curves, trial_id: str) -> str:
    row = curves.trials.loc[curves.trials["trial_id"] == trial_id].iloc[0]
    return "stopped early in the run" if bool(row.get("stopped_early")) else str(row["status"])


def best_val_acc(history: Sequence[dict[str, Any]]) -> float:
    seen = [float(r["val_acc"]) for r in history if r.get("val_acc") is not None and not math.isnan(r["val_acc"])]
    return max(seen, default=math.nan)


def judged(curves: Curves, setting: Setting, trained: dict[str, int], stopped_at: dict[str, int],
           wall: float) -> Outcome:
    seen = {tid: best_val_acc(curves.histories[tid][:n]) for tid, n in trained.items()}
    full = {tid: best_val_acc(curves.histories[tid]) for tid in curves.order}
    pick = _argmax(seen, curves.order)
    best = _argmax(full, curves.order)
    outcome = Outcome(setting, trained, stopped_at, sum(len(curves.histories[t]) for t in curves.order), wall,
                      pick, seen.get(pick, math.nan), best, full.get(best, math.nan))
    if len(setting.objectives) > 1:
        finished = [tid for tid, n in trained.items() if n >= curves.limits[tid]]
        complete = [tid for tid in curves.order if len(curves.histories[tid]) >= curves.limits[tid]]
        points = {tid: scores(setting.objectives, curves.histories[tid], curves.facts[tid]) for tid in complete}
        scaled = scale(points)
        reference = [-REFERENCE_BELOW] * len(setting.objectives)
        full_volume = pareto.hypervolume(list(scaled.values()), reference)
        volume = pareto.hypervolume([scaled[t] for t in finished if t in scaled], reference)
        outcome.hypervolume_ratio = volume / full_volume if full_volume > 0 else math.nan
        outcome.front = [finished[i] for i in pareto.front([points[t] for t in finished])] if finished else []
        ids = list(points)
        outcome.full_front = [ids[i] for i in pareto.front([points[t] for t in ids])]
    return outcome


def _argmax(values: dict[str, float], order: list[str]) -> str | None:
    ranked = [t for t in order if t in values and not math.isnan(values[t])]
    return max(ranked, key=lambda t: (values[t], -order.index(t))) if ranked else None


def scale(points: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
    """Each objective to [0, 1] over the finite values of all `points` (1: the best)."""
    if not points:
        return {}
    dims = len(next(iter(points.values())))
    lows, highs = [], []
    for k in range(dims):
        finite = [p[k] for p in points.values() if math.isfinite(p[k])]
        lows.append(min(finite, default=0.0))
        highs.append(max(finite, default=1.0))
    def scaled(value: float, k: int) -> float:
        if highs[k] > lows[k]:
            return (value - lows[k]) / (highs[k] - lows[k])
        return 1.0 if math.isfinite(value) else -math.inf  # every trial the same on this objective

    return {tid: tuple(scaled(p[k], k) for k in range(dims)) for tid, p in points.items()}


def sweep(curves: Curves, base: Setting, grace_periods: Sequence[int] = SWEEP_GRACE_PERIODS,
          reduction_factors: Sequence[int] = SWEEP_REDUCTION_FACTORS) -> list[Outcome]:
    """The run as it ran, then `base`'s scheduler at each grace period within the run's epochs
    and each reduction factor; settings that need epochs the run lacks are left out (an error
    if all do)."""
    outcomes = [simulate(curves, replace(base, scheduler=AS_RUN))]
    schedulers = [base.scheduler] if base.scheduler not in ("none", AS_RUN) else ["asha"]
    skipped = []
    for scheduler in schedulers:
        for grace in [g for g in grace_periods if g <= curves.max_epochs]:
            for factor in reduction_factors:
                setting = replace(base, scheduler=scheduler, grace_period=grace, reduction_factor=factor)
                try:
                    outcomes.append(simulate(curves, setting))
                except UserError as e:
                    skipped.append(str(e))
    if len(outcomes) == 1 and skipped:
        raise UserError(skipped[0])
    return outcomes


def replay(run: store.RunTables, scheduler: str | None = None, grace_period: int = 1, reduction_factor: int = 3,
           objectives: str | None = None, concurrency: int = 1,
           sweep_settings: bool = False) -> tuple[Curves, list[Outcome]]:
    """`tunefm replay`: the run as it ran (every trial its recorded epochs), then the chosen
    setting, or the sweep.
    Objectives default to the run's own (`--objectives` of its search), else val_acc:max;
    the scheduler to mo-asha for several objectives, else asha."""
    curves = Curves.of(run)
    chosen = parse(objectives or curves.objectives or "val_acc:max")
    scheduler = scheduler or ("mo-asha" if len(chosen) > 1 else "asha")
    setting = Setting(scheduler, grace_period, reduction_factor, chosen, concurrency)
    if grace_period < 1 or reduction_factor < 2:
        raise UserError(f"--grace-period must be >= 1 and --reduction-factor >= 2, got {grace_period} and "
                        f"{reduction_factor}")
    if sweep_settings:
        return curves, sweep(curves, setting)
    baseline = simulate(curves, replace(setting, scheduler=AS_RUN))
    return curves, [baseline, simulate(curves, setting)]

