"""Grids of drawn values: a config key drawn from a range, grouped into a few labelled ranges.

A random or TPE study draws lr from loguniform(1e-5, 1e-2), so every trial has an lr of
its own, and a grid with one row per value is a table of single trials. Such a key's
values are replaced by the range they fall in, an ordered category labelled with its
bounds, so each grid cell averages several trials:

    binnings = bins.for_grid(trials, run.info["study"]["space"], ("lr", "batch_size"))
    cells = queries.grid(bins.apply(trials, binnings), "best_val_acc", "lr", "batch_size")
    binnings["lr"].labels                    # ["[1e-05, 0.0001)", "[0.0001, 0.001)", "[0.001, 0.01]"]
    binnings["lr"].describe()                # "lr in 3 log-spaced ranges of loguniform(1e-05, 0.01)"

The ranges split the study's declared range evenly (in log space for log-uniform keys), so
a loguniform over three decades in three ranges gets one decade each. A grid study's keys,
and a `tune.choice`, keep their exact values. Pure pandas: no Ray.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

MIN_BINS, MAX_BINS = 2, 5
TRIALS_PER_CELL = 3  # what the number of ranges aims for
# distributions.describe's ranges: uniform, loguniform, quniform, qloguniform, randint, lograndint
RANGE = re.compile(r"^q?(?P<log>log)?(?:uniform|randint)\((?P<low>[^,]+), (?P<high>[^)]+)\)$")


@dataclass(frozen=True)
class Binning:
    key: str
    edges: tuple[float, ...]
    log: bool
    declared: str  # the study's distribution, as run.json records it

    @property
    def labels(self) -> list[str]:
        """'[1e-05, 0.0001)', ..., the last one closed: '[0.001, 0.01]'."""
        pairs = list(zip(self.edges[:-1], self.edges[1:]))
        return [f"[{low:.3g}, {high:.3g}{']' if i == len(pairs) - 1 else ')'}" for i, (low, high) in enumerate(pairs)]

    def describe(self) -> str:
        spacing = "log-spaced " if self.log else ""
        return f"{self.key} in {len(self.edges) - 1} {spacing}ranges of {self.declared}"

    def assign(self, values: pd.Series) -> pd.Categorical:
        """Each value's range (values outside the declared range go to the nearest end one)."""
        inner = np.asarray(self.edges[1:-1], dtype=float)
        codes = np.searchsorted(inner, values.to_numpy(dtype=float), side="right")
        codes = np.where(values.isna().to_numpy(), -1, codes)
        return pd.Categorical.from_codes(codes, categories=self.labels, ordered=True)


def declared_range(description: str) -> tuple[float, float, bool] | None:
    """(low, high, log) of a drawn range in run.json's `space`, None for a choice."""
    match = RANGE.match(description.strip())
    if not match:
        return None
    return float(match["low"]), float(match["high"]), bool(match["log"])


def count_for(trials: int, other_axis_values: int | None) -> int:
    """How many ranges: about TRIALS_PER_CELL trials per cell, MIN_BINS to MAX_BINS.
    `other_axis_values`: the other axis's count, or None when it is binned too."""
    cells = trials / TRIALS_PER_CELL
    wanted = math.isqrt(int(cells)) if other_axis_values is None else int(cells // max(other_axis_values, 1))
    return min(MAX_BINS, max(MIN_BINS, wanted))


def for_grid(trials: pd.DataFrame, space: Mapping[str, str], axes: Iterable[str]) -> dict[str, Binning]:
    """The axes of a grid to bin: keys drawn from a declared range that take more distinct
    values in these trials than the ranges they would get."""
    axes = list(axes)
    ranges = {k: declared_range(space[k]) for k in axes if k in space and k in trials}
    drawn = [k for k, r in ranges.items() if r is not None]
    per_grid = trials.groupby("model").size().max() if "model" in trials and "model" not in axes else len(trials)
    out = {}
    for key in drawn:
        others = [k for k in axes if k != key]
        other_count = None if any(k in drawn for k in others) else (
            int(trials[others[0]].nunique()) if others and others[0] in trials else 1)
        count = count_for(int(per_grid or 0), other_count)
        if trials[key].nunique() <= count:
            continue  # few distinct values: exact ones read better
        low, high, log = ranges[key]
        edges = np.geomspace(low, high, count + 1) if log and low > 0 else np.linspace(low, high, count + 1)
        out[key] = Binning(key, tuple(float(e) for e in edges), log and low > 0, space[key])
    return out


def apply(frame: pd.DataFrame, binnings: Mapping[str, Binning]) -> pd.DataFrame:
    """`frame` with each binned key's values replaced by its range (an ordered category)."""
    if not binnings:
        return frame
    return frame.assign(**{key: b.assign(frame[key]) for key, b in binnings.items() if key in frame})
