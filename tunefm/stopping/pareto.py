"""Pareto ranking of score vectors (every objective: higher is better).

    ranks(points)              # 0 for the non-dominated, 1 for those only they dominate, ...
    crowding(points, members)  # NSGA-II's crowding distance within one front
    order(points)              # indices best first: by rank, then larger crowding distance
    hypervolume(points, ref)   # the volume they dominate above `ref`

Fronts in tunefm are small (a rung holds tens to hundreds of trials), so the plain O(n^2)
sort (one array comparison of every pair) and an exact slicing hypervolume are fast enough
and easy to check by hand.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """`a` is at least as good as `b` everywhere and better somewhere."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def dominance(points: Sequence[Point]) -> np.ndarray:
    """(n, n) booleans: [i, j] is whether point i dominates point j (`dominates`, every pair at once)."""
    values = np.asarray(points, dtype=float).reshape(len(points), -1) if len(points) else np.zeros((0, 0))
    at_least = (values[:, None, :] >= values[None, :, :]).all(axis=2)
    better = (values[:, None, :] > values[None, :, :]).any(axis=2)
    return at_least & better


def ranks(points: Sequence[Point]) -> list[int]:
    """Non-dominated sorting (Deb et al., 2002): each point's front, 0 the best."""
    dominates_ = dominance(points)
    dominated_by = dominates_.sum(axis=0)  # how many points dominate each
    rank = np.full(len(points), -1)
    current, level = np.flatnonzero(dominated_by == 0), 0
    while current.size:  # peel the fronts: those no remaining point dominates
        rank[current] = level
        dominated_by = dominated_by - dominates_[current].sum(axis=0)
        current, level = np.flatnonzero((dominated_by == 0) & (rank < 0)), level + 1
    return rank.tolist()


def crowding(points: Sequence[Point], members: Sequence[int]) -> dict[int, float]:
    """Crowding distance of each of `members` (one front): per objective, the gap between its
    neighbours over the front's range, summed; the ends of each objective get infinity.
    A value of -inf (a missing one) counts as the front's lowest finite value."""
    distance = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for k in range(len(points[members[0]])):
        finite = [points[i][k] for i in members if math.isfinite(points[i][k])]
        low = min(finite, default=0.0)

        def value(i: int) -> float:
            return points[i][k] if math.isfinite(points[i][k]) else low

        ordered = sorted(members, key=lambda i: (value(i), i))
        span = value(ordered[-1]) - value(ordered[0])
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if span <= 0:
            continue
        for before, i, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[i] += (value(after) - value(before)) / span
    return distance


def order(points: Sequence[Point]) -> list[int]:
    """Indices best first: front by front, within a front the larger crowding distance
    first (the more isolated point keeps the front's spread), then the earlier index."""
    rank = ranks(points)
    distance: dict[int, float] = {}
    for level in set(rank):
        distance.update(crowding(points, [i for i in range(len(points)) if rank[i] == level]))
    return sorted(range(len(points)), key=lambda i: (rank[i], -distance[i], i))


def front(points: Sequence[Point]) -> list[int]:
    """The indices of the non-dominated points, in order."""
    return [i for i, r in enumerate(ranks(points)) if r == 0]


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The volume of the region dominated by `points` and above `reference` (exact: slicing
    along the last objective, recursively; points not above the reference add nothing)."""
    kept = [tuple(p) for p in points if all(x > r for x, r in zip(p, reference))]
    if not kept:
        return 0.0
    if len(reference) == 1:
        return max(p[0] for p in kept) - reference[0]
    kept.sort(key=lambda p: p[-1], reverse=True)
    volume = 0.0
    for i, point in enumerate(kept):
        floor = kept[i + 1][-1] if i + 1 < len(kept) else reference[-1]
        if point[-1] > floor:  # the slice between this point's level and the next one down
            volume += hypervolume([p[:-1] for p in kept[: i + 1]], reference[:-1]) * (point[-1] - floor)
    return volume
