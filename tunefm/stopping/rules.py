"""Asynchronous successive halving, on one objective (ASHA) or several (MO-ASHA), rung by rung.

    rule = make("asha", parse("val_acc:max"), max_epochs=9, grace_period=1, reduction_factor=3)
    rule.on_epoch("t1", history)      # CONTINUE, STOP or END; history: the trial's rows so far
    rule.stopped_at                   # {trial id: the rung (epoch) where the rule stopped it}

Rungs sit at grace_period * reduction_factor**k epochs below max_epochs. When a trial
reports the epoch of a rung it has not been judged at, it is compared with the trials
already recorded there, then recorded itself (Li et al., 2020):

- ASHA stops it when its score is below the (1 - 1/reduction_factor) percentile of those
  recorded. This is Ray Tune's `ASHAScheduler` (one bracket) decision for decision,
  percentile, NaN and the rung arithmetic included; a test holds the two to the same
  decisions, so `tunefm replay` predicts what a search does.
- MO-ASHA (Schmucker et al., 2021) orders the recorded trials and this one by
  non-dominated sorting, ties within a front broken by crowding distance (larger first),
  then by who was recorded first; the trial continues when it is among the first
  ceil(n / reduction_factor) of the n. The first trial at a rung always continues.

A trial that reports max_epochs has ended (END), never judged, as in Ray's scheduler.
"""

from __future__ import annotations

import abc
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from tunefm.errors import UserError
from tunefm.stopping import pareto
from tunefm.stopping.objectives import Objective, scores, values

CONTINUE, STOP, END = "continue", "stop", "end"
NAMES = ("asha", "mo-asha")


def milestones(max_epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The rungs' epochs, highest first: Ray's `_Bracket` arithmetic (numpy logs), so an
    edge such as log(1000)/log(10) < 3 rounds the same way here."""
    count = int(np.log(max_epochs / grace_period) / np.log(reduction_factor) + 1)
    return [grace_period * reduction_factor ** k for k in reversed(range(count))]


def check(max_epochs: int, grace_period: int) -> None:
    if grace_period > max_epochs:
        raise UserError(f"--grace-period {grace_period} is more than the trials' {max_epochs} epochs; "
                        f"give 1 to {max_epochs}")


class RungRule(abc.ABC):
    """The rung bookkeeping both rules share; `judge` is where they differ."""

    name: str

    def __init__(self, objectives: Sequence[Objective], max_epochs: int, grace_period: int, reduction_factor: int):
        check(max_epochs, grace_period)
        self.objectives = tuple(objectives)
        self.max_epochs = max_epochs
        self.grace_period = grace_period
        self.reduction_factor = reduction_factor
        self.rungs: list[tuple[int, dict[str, Any]]] = [(m, {}) for m in milestones(max_epochs, grace_period,
                                                                                   reduction_factor)]
        self.stopped_at: dict[str, int] = {}

    def on_epoch(self, trial_id: str, history: Sequence[Mapping[str, Any]],
                 facts: Mapping[str, Any] | None = None) -> str:
        """The decision after the trial's latest row (`history[-1]`, whose `epoch` counts from 1)."""
        epoch = int(history[-1]["epoch"])
        if epoch >= self.max_epochs:
            return END
        for milestone, recorded in self.rungs:
            if epoch < milestone or trial_id in recorded:
                continue
            score = self.score(history, facts)
            keep = self.judge(recorded, score)
            recorded[trial_id] = score
            if not keep:
                self.stopped_at[trial_id] = milestone
                return STOP
            break
        return CONTINUE

    @abc.abstractmethod
    def score(self, history: Sequence[Mapping[str, Any]], facts: Mapping[str, Any] | None) -> Any:
        """What the rung records for the trial."""

    @abc.abstractmethod
    def judge(self, recorded: Mapping[str, Any], score: Any) -> bool:
        """Whether a trial with `score` continues past a rung holding `recorded`."""


class Asha(RungRule):
    name = "asha"

    def score(self, history, facts) -> float:
        (objective,) = self.objectives
        return objective.sign * values(self.objectives, history, facts)[0]  # NaN stays NaN, as in Ray

    def judge(self, recorded, score) -> bool:
        if not recorded:
            return True
        with warnings.catch_warnings():  # every recorded score NaN: the cutoff is NaN, and the trial continues
            warnings.simplefilter("ignore", RuntimeWarning)
            cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / self.reduction_factor) * 100)
        return not score < cutoff


class MoAsha(RungRule):
    name = "mo-asha"

    def score(self, history, facts) -> tuple[float, ...]:
        return scores(self.objectives, history, facts)

    def judge(self, recorded, score) -> bool:
        points = [*recorded.values(), score]
        position = pareto.order(points).index(len(points) - 1)
        return position < math.ceil(len(points) / self.reduction_factor)


def make(name: str, objectives: Sequence[Objective], max_epochs: int, grace_period: int,
         reduction_factor: int) -> RungRule:
    """ASHA for one objective, MO-ASHA for several; a UserError for a pairing that cannot be."""
    if name == "asha":
        if len(objectives) != 1:
            raise UserError(f"asha judges one objective, got {len(objectives)} ({', '.join(map(str, objectives))}); "
                            f"use mo-asha for several")
        return Asha(objectives, max_epochs, grace_period, reduction_factor)
    if name == "mo-asha":
        if len(objectives) < 2:
            raise UserError("mo-asha needs at least two objectives, e.g. --objectives val_acc:max,time_per_epoch_s:min")
        return MoAsha(objectives, max_epochs, grace_period, reduction_factor)
    raise UserError(f"scheduler must be one of {', '.join(NAMES)}, none, got {name!r}")


def name_for(objectives: Sequence[Objective]) -> str:
    """The search's rule for these objectives: asha on one, mo-asha on several."""
    return "asha" if len(objectives) == 1 else "mo-asha"


def label(objectives: Sequence[Objective]) -> str:
    """The rule's name in words: 'ASHA' or 'MO-ASHA'."""
    return name_for(objectives).upper()


def for_objectives(objectives: Sequence[Objective], max_epochs: int, grace_period: int,
                   reduction_factor: int) -> RungRule:
    """The search's rule: ASHA on one objective, MO-ASHA on several."""
    return make(name_for(objectives), objectives, max_epochs, grace_period, reduction_factor)
