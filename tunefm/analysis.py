"""Answers from a run's tables as pure pandas functions (no Ray, no I/O)."""

from __future__ import annotations

import pandas as pd


def best_per_model(trials: pd.DataFrame, metric: str = "best_val_acc") -> pd.DataFrame:
    """The trial with the highest `metric` for each model, best model first."""
    scored = trials.dropna(subset=[metric])
    if scored.empty:
        return scored
    best = scored.loc[scored.groupby("model", sort=False)[metric].idxmax()]
    return best.sort_values(metric, ascending=False).reset_index(drop=True)
