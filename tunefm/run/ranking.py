"""Configurations ranked by a metric, and the trials a run evaluates on the test set.

    trial_ids = ranking.top_configs(trials, k=3)     # every seed of each model's top 3 configurations

A configuration is a trial's config without its seed: its seeds are ranked together, by
their mean. The test evaluation (`tune/evaluate.py`), checkpoint retention
(`tune/retention.py`) and the summaries (`analysis/queries.py`) all rank this way, by
validation figures only: model selection never sees the test set.
"""

from __future__ import annotations

import pandas as pd

from tunefm.run.trial_summary import config_columns


def configuration_keys(trials: pd.DataFrame) -> list[str]:
    """The config columns that tell configurations apart: all but the seed."""
    return [c for c in config_columns(trials) if c != "seed"]


def ranked(configurations: pd.DataFrame, metric: str, higher_is_better: bool = True) -> pd.DataFrame:
    """One row per configuration (`metric` its mean, `n` its seeds, `trial_ids` comma-separated),
    best first; ties go to more seeds, then to the earliest trial id."""
    return configurations.sort_values([metric, "n", "trial_ids"], kind="stable",
                                      ascending=[not higher_is_better, False, True])


def top_configs(trials: pd.DataFrame, k: int) -> list[str]:
    """Trial ids to evaluate on the test set: every seed of each model's top `k` configurations,
    ranked by mean validation accuracy over seeds."""
    scored = trials[trials["best_val_acc"].notna()] if "best_val_acc" in trials else trials.iloc[:0]
    if k < 1 or scored.empty:
        return []
    rows = pd.DataFrame([{"model": group["model"].iloc[0], "best_val_acc": group["best_val_acc"].mean(),
                          "n": len(group), "trial_ids": ",".join(sorted(group["trial_id"]))}
                         for _, group in scored.groupby(configuration_keys(scored), dropna=False, sort=False)])
    chosen = ranked(rows, "best_val_acc").groupby("model", sort=False).head(k)
    return sorted(trial_id for ids in chosen["trial_ids"] for trial_id in ids.split(","))
