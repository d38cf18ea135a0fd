"""What a whole search would take alone and fused: the estimate `--fuse auto` decides by.

    shapes = [ShapeWork(trials=16, samples=768_000, solo_rate=8_870, group_rates={4: 18_300, 8: 17_510})]
    costs = StartCosts(member_s=1.4, trainer_s=2.0)
    best = fusion_cost.best(shapes, slots=2, cores=2, costs=costs, largest=16)
    best.group_size, best.speedup     # 4, 1.57: fuse 4 trials per slot

A fused group trains faster than its members would alone (its calibrated `group_rates`),
but a fused search pays for more than the group's steps: every member is a Ray Tune trial,
a worker process that imports Tune, and all of a group's members run at once. So the
estimate is made for the whole study on the whole cluster, from measured figures only:

  alone:  sum over shapes of samples / solo_rate, spread over the slots, plus one trial
          process per slot (Tune and torch: `member_s + trainer_s`);
  fused:  per shape, groups of min(g, its trials per slot) members per slot at the group's
          calibrated rate, spread over the slots, plus a member process (Tune) per trial
          running at once (g per slot) and an executor per slot (torch: `trainer_s`).

Process starts are CPU-seconds shared by the node's cores. Every candidate g (the sizes
calibration measured, up to `largest`) is estimated, and the fastest kept. Nothing here
imports Ray or torch: the figures come from `calibrate.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ShapeWork:
    """The trials of one shape: how many, their training samples in all, and the calibrated
    samples/s of one trial alone and of a group of each measured size (aggregate)."""

    trials: int
    samples: float
    solo_rate: float
    group_rates: dict[int, float] = field(default_factory=dict)

    def rate(self, members: int) -> float:
        """Aggregate samples/s of `members` trained together: the largest measured size that
        fits, and alone below the smallest (never extrapolated)."""
        fitting = [size for size in self.group_rates if size <= members]
        return self.group_rates[max(fitting)] if fitting and members > 1 else self.solo_rate


@dataclass(frozen=True)
class StartCosts:
    """CPU-seconds to start a process that imports Tune (each trial's, fused or not) and one that
    imports torch (a solo trial's trainer, or an executor), as measured on this machine."""

    member_s: float
    trainer_s: float


@dataclass(frozen=True)
class Estimate:
    group_size: int  # fused members per slot; 1 = every trial alone
    seconds_alone: float
    seconds_fused: float

    @property
    def speedup(self) -> float:
        return self.seconds_alone / self.seconds_fused if self.seconds_fused > 0 else 1.0


def seconds_alone(shapes: list[ShapeWork], slots: int, cores: float, costs: StartCosts) -> float:
    trials = sum(s.trials for s in shapes)
    train = sum(s.samples / s.solo_rate for s in shapes) / slots
    return train + min(slots, trials) * (costs.member_s + costs.trainer_s) / cores


def seconds_fused(shapes: list[ShapeWork], slots: int, cores: float, costs: StartCosts, group_size: int) -> float:
    train = 0.0
    for shape in shapes:
        per_slot = min(group_size, math.ceil(shape.trials / slots))  # the coordinator spreads a shape evenly
        train += shape.samples / shape.rate(per_slot) / slots
    running = min(sum(s.trials for s in shapes), group_size * slots)  # member processes, reused by later trials
    return train + (running * costs.member_s + slots * costs.trainer_s) / cores


def estimate(shapes: list[ShapeWork], slots: int, cores: float, costs: StartCosts, group_size: int) -> Estimate:
    return Estimate(group_size, seconds_alone(shapes, slots, cores, costs),
                    seconds_fused(shapes, slots, cores, costs, group_size))


def estimates(shapes: list[ShapeWork], slots: int, cores: float, costs: StartCosts,
              largest: int = 16) -> list[Estimate]:
    """The study alone (group size 1) and fused at every group size measured for any of its
    shapes, up to `largest`."""
    sizes = sorted({size for shape in shapes for size in shape.group_rates if 1 < size <= largest})
    return [estimate(shapes, slots, cores, costs, size) for size in [1] + sizes]


def fastest(candidates: list[Estimate]) -> Estimate:
    """The estimate of the fastest search; on a tie the smaller group (fewer processes)."""
    return max(candidates, key=lambda e: (e.speedup, -e.group_size))


def best(shapes: list[ShapeWork], slots: int, cores: float, costs: StartCosts, largest: int) -> Estimate:
    """The group size per slot (among the measured ones up to `largest`) whose whole search is
    estimated fastest; group size 1 (alone) if none beats training every trial alone."""
    return fastest(estimates(shapes, slots, cores, costs, largest))
