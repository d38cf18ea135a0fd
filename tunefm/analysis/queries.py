"""Answers from a run's tables as pure pandas functions (no Ray, no torch, no I/O).

    best(trials)                       best configuration per model (mean ± std over seeds)
    grid(trials, "best_val_acc", "lr", "batch_size")      a metric over two hyperparameters
    pareto(trials, "best_val_acc", "total_time_s")        trials no other trial beats on both
    overfit(trials, epochs), overfit_grid(...)            train/val loss gaps, overfitting flags
    confusion(confusion_counts, trials)                   matrix, per-class P/R/F1, confused pairs
    reported_vs_run(trials, reported)  the figures the source seed reported beside this run's

Every function takes the DataFrames of `store.load_run` and returns DataFrames; the
tests build those frames by hand. A configuration is a trial's config without its
seed, so repeated seeds of one grid point are summarized together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from tunefm.engine.data import CLASSES
from tunefm.errors import UserError
from tunefm.run import ranking
from tunefm.run.trial_summary import config_columns

COSTS = ("total_time_s", "time_per_epoch_s", "time_to_90_train_acc_s", "params", "gpu_seconds")
AGGREGATES = ("mean", "max", "min")  # how a grid cell combines its trials
OVERFIT_TOLERANCE = 0.10  # final val loss this far above its minimum, train loss still falling


def higher_is_better(metric: str) -> bool:
    """Accuracies are better high; losses, gaps, times and sizes are better low."""
    return not ("loss" in metric or "gap" in metric or metric.endswith("_s") or metric in ("params", "gpu_seconds"))


def varied_keys(trials: pd.DataFrame, exclude: tuple[str, ...] = ("model", "seed")) -> list[str]:
    """Config keys that take more than one value in this run."""
    return [c for c in config_columns(trials)
            if c not in exclude and trials[c].astype(str).nunique(dropna=False) > 1]


def describe_columns(trials: pd.DataFrame) -> list[str]:
    """Config columns that identify a trial in a table: model, lr, batch_size, then other varied keys."""
    leading = [c for c in ("model", "lr", "batch_size") if c in trials.columns]
    return leading + [c for c in varied_keys(trials) if c not in leading]


def check_column(trials: pd.DataFrame, column: str, option: str) -> None:
    numeric = [c for c in trials.columns if pd.api.types.is_numeric_dtype(trials[c])]
    if column not in numeric:
        raise UserError(f"{option} {column!r} is not a numeric column of this run; valid: {', '.join(numeric)}")


def _check_config_key(trials: pd.DataFrame, key: str, option: str) -> None:
    keys = config_columns(trials)
    if key not in keys:
        raise UserError(f"{option} {key!r} is not a config key of this run; valid: {', '.join(keys)}")


def configurations(trials: pd.DataFrame, metric: str = "best_val_acc") -> pd.DataFrame:
    """One row per configuration (config without seed) with a `metric`, best mean first.

    Columns: model, params, n (seeds with a result), `metric` and `metric`_std, test_acc,
    test_acc_std, test_n (seeds evaluated on the test set), the config columns that
    vary, min_train_loss, min_train_loss_epoch, val_loss_at_best, time_per_epoch_s,
    epochs, trial_ids (comma-separated). Means over seeds; std is NaN for one seed.
    "Best" is the highest mean, or the lowest for a loss or a time.
    """
    check_column(trials, metric, "--metric")
    scored = trials[trials[metric].notna()]
    if scored.empty:
        return pd.DataFrame(columns=["model", "params", "n", metric, f"{metric}_std", "trial_ids"])
    shown = describe_columns(scored)
    rows = []
    for _, group in scored.groupby(ranking.configuration_keys(scored), dropna=False, sort=False):
        first = group.iloc[0]
        rows.append({
            "model": first["model"], "params": first["params"], "n": len(group),
            metric: group[metric].mean(), f"{metric}_std": group[metric].std(ddof=1),
            "test_acc": group["test_acc"].mean(), "test_acc_std": group["test_acc"].std(ddof=1),
            "test_n": int(group["test_acc"].notna().sum()),
            **{c: first[c] for c in shown if c != "model"},
            "min_train_loss": group["min_train_loss"].mean(),
            "min_train_loss_epoch": group["min_train_loss_epoch"].mean(),
            "val_loss_at_best": group["val_loss_at_best"].mean(),
            "time_per_epoch_s": group["time_per_epoch_s"].mean(),
            "epochs": group["epochs"].mean(),
            "trial_ids": ",".join(sorted(group["trial_id"])),
        })
    return ranking.ranked(pd.DataFrame(rows), metric, higher_is_better(metric))  # as the test evaluation ranks


def best(trials: pd.DataFrame, metric: str = "best_val_acc") -> pd.DataFrame:
    """One row per model: its best configuration (`configurations`' columns), best model first."""
    return configurations(trials, metric).drop_duplicates("model").reset_index(drop=True)


def grid_axes(trials: pd.DataFrame, rows: str | None = None, cols: str | None = None,
              order: Sequence[str] = ()) -> tuple[str, str]:
    """The two config keys a grid shows: those given, else lr and batch_size where they vary,
    else the keys that vary, the study's own grid keys (`order`) first. A study that fixes
    lr and batch size (seed 004's architecture grid) would otherwise get a 1 x 1 table."""
    config = [c for c in config_columns(trials) if c not in ("model", "seed")]  # a grid per model; seeds average
    candidates = dict.fromkeys(k for k in ("lr", "batch_size", *order, *config) if k in config)
    varying = [k for k in candidates if trials[k].nunique(dropna=True) > 1]
    picks = [k for k in (*varying, "lr", "batch_size") if k not in (rows, cols)]
    rows = rows or picks.pop(0)
    return rows, cols or next(k for k in picks if k != rows)


def grid(trials: pd.DataFrame, metric: str = "best_val_acc", rows: str = "lr", cols: str = "batch_size",
         agg: str = "mean") -> pd.DataFrame:
    """`metric` over `rows` x `cols` for each model, long form: model, rows, cols, value, n, stopped.

    A cell aggregates every trial with that model, row and column value (seeds, and any
    other key that varies) with `agg` (mean, max or min); n counts those trials and
    `stopped` those that ASHA stopped early (their numbers come from fewer epochs).
    """
    check_column(trials, metric, "--metric")
    _check_config_key(trials, rows, "--rows")
    _check_config_key(trials, cols, "--cols")
    if rows == cols:
        raise UserError(f"--rows and --cols must differ, both are {rows!r}")
    if agg not in AGGREGATES:
        raise UserError(f"--agg must be {', '.join(AGGREGATES[:-1])} or {AGGREGATES[-1]}, got {agg!r}")
    scored = trials[trials[metric].notna()]
    keys = ["model", rows, cols] if "model" not in (rows, cols) else [rows, cols]
    cells = scored.groupby(keys, sort=True, observed=True).agg(
        value=(metric, agg), n=(metric, "count"), stopped=("stopped_early", "sum")).reset_index()
    cells["stopped"] = cells["stopped"].astype(int)
    return cells.rename(columns={"value": metric})


def pivot(cells: pd.DataFrame, model: str | None, rows: str, cols: str, metric: str) -> pd.DataFrame:
    """One model's grid cells as a rows x cols table of `metric` (or of n, stopped; NaN where no trial)."""
    part = cells if model is None else cells[cells["model"] == model]
    return part.pivot(index=rows, columns=cols, values=metric)  # a binned key: the ranges these cells have


def with_cost(trials: pd.DataFrame, cost: str) -> pd.DataFrame:
    if cost not in COSTS:
        raise UserError(f"--cost must be one of {', '.join(COSTS)}, got {cost!r}")
    if cost == "gpu_seconds":  # GPU time actually held: a 0.25 share costs a quarter
        return trials.assign(gpu_seconds=trials["total_time_s"] * trials["gpu_fraction"])
    if cost not in trials.columns:
        raise UserError(f"--cost {cost} is not recorded in this run (it predates that column)")
    return trials


def pareto(trials: pd.DataFrame, metric: str = "best_val_acc", cost: str = "total_time_s") -> pd.DataFrame:
    """Trials that no other trial beats on both `metric` and `cost` (lower is better).

    The metric is better high (accuracies) or low (losses, times: `higher_is_better`).
    Trial j beats trial i when j's metric is at least as good and j's cost <= i's, one
    of them strictly. Trials equal on both are all kept. Sorted by cost, then metric.
    """
    check_column(trials, metric, "--metric")
    costed = with_cost(trials, cost)
    scored = costed[costed[metric].notna() & costed[cost].notna()]
    sign = 1 if higher_is_better(metric) else -1
    goodness = sign * scored[metric]
    scored = scored.assign(_goodness=goodness).sort_values([cost, "_goodness"], ascending=[True, False],
                                                           kind="stable")
    keep, best_cheaper = [], -np.inf
    for _, same_cost in scored.groupby(cost, sort=True):
        top = same_cost["_goodness"].max()
        if top > best_cheaper:  # equal to something cheaper means beaten by it
            keep.extend(same_cost.index[same_cost["_goodness"] == top])
            best_cheaper = top
    front = scored.loc[keep]
    marks = [c for c in ("stopped_early", "stopped_at_rung", "up_to_epoch") if c in trials.columns]  # footing's
    columns = ["trial_id", *describe_columns(trials), metric, cost, "epochs", *marks]
    return front[list(dict.fromkeys(columns))].reset_index(drop=True)


def overfit(trials: pd.DataFrame, epochs: pd.DataFrame, tolerance: float = OVERFIT_TOLERANCE) -> pd.DataFrame:
    """Per trial, in config order: final losses, their gap, where val loss bottomed out, and
    an overfitting flag.

    `overfitting` is true when the final val loss is at least `tolerance` (10%) above
    its minimum while the train loss kept falling after that minimum.
    """
    shown = describe_columns(trials)
    rows = []
    histories = ({tid: g.sort_values("epoch") for tid, g in epochs.groupby("trial_id", sort=False)}
                 if len(epochs) else {})
    for trial in trials.itertuples(index=False):
        history = histories.get(trial.trial_id)
        if history is None or history.empty:
            continue
        last = history.iloc[-1]
        row = {"trial_id": trial.trial_id, **{c: getattr(trial, c) for c in shown},
               "epochs": int(last["epoch"]), "final_train_loss": last["train_loss"],
               "final_val_loss": last["val_loss"], "gap": last["val_loss"] - last["train_loss"],
               "min_val_loss": np.nan, "min_val_loss_epoch": pd.NA, "epochs_past_min": pd.NA,
               "val_rise": np.nan, "overfitting": False}
        if history["val_loss"].notna().any():  # a diverged trial has only NaN losses
            lowest = history.loc[history["val_loss"].idxmin()]
            rise = last["val_loss"] / lowest["val_loss"] - 1 if lowest["val_loss"] > 0 else np.nan
            train_kept_falling = last["train_loss"] < lowest["train_loss"]
            row.update(min_val_loss=lowest["val_loss"], min_val_loss_epoch=int(lowest["epoch"]),
                       epochs_past_min=int(last["epoch"] - lowest["epoch"]), val_rise=rise,
                       overfitting=bool(rise >= tolerance and train_kept_falling))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["trial_id", *shown, "epochs", "final_train_loss", "final_val_loss", "gap",
                                        "min_val_loss", "min_val_loss_epoch", "epochs_past_min", "val_rise",
                                        "overfitting"])
    for column in ("min_val_loss_epoch", "epochs_past_min"):
        table[column] = table[column].astype("Int64")
    table["overfitting"] = table["overfitting"].astype(bool)
    return table.sort_values([*shown, "trial_id"], kind="stable").reset_index(drop=True)


def overfit_grid(gaps: pd.DataFrame, rows: str = "lr", cols: str = "batch_size") -> pd.DataFrame:
    """Mean gap over `rows` x `cols` across models: rows, cols, mean_gap, n, overfitting (count)."""
    for key, option in ((rows, "--rows"), (cols, "--cols")):
        if key not in gaps.columns:
            raise UserError(f"{option} {key!r} is not a config key of this run")
    if gaps.empty:
        return pd.DataFrame(columns=[rows, cols, "mean_gap", "n", "overfitting"])
    cells = gaps.groupby([rows, cols], sort=True, observed=True).agg(
        mean_gap=("gap", "mean"), n=("gap", "count"), overfitting=("overfitting", "sum"))
    return cells.reset_index()


@dataclass
class Confusion:
    """One trial's test-set confusion: matrix (true x predicted, class names), per class, pairs."""

    trial_id: str
    matrix: pd.DataFrame
    per_class: pd.DataFrame  # label, class, precision, recall, f1, support
    pairs: pd.DataFrame  # true_class, pred_class, count, share (of the true class)

    @property
    def accuracy(self) -> float:
        values = self.matrix.to_numpy()
        return float(np.trace(values) / values.sum()) if values.sum() else float("nan")


def chosen_trial(confusion_counts: pd.DataFrame, trials: pd.DataFrame, trial_id: str | None = None) -> str:
    """`trial_id` if it was evaluated, else the evaluated trial with the best validation accuracy."""
    evaluated = sorted(set(confusion_counts["trial_id"]))
    if not evaluated:
        raise UserError("no trial of this run has a test-set evaluation; run `tunefm evaluate RUN` first")
    if trial_id is not None:
        if trial_id not in evaluated:
            raise UserError(f"--trial {trial_id!r} has no test-set evaluation; evaluated trials: "
                            f"{', '.join(evaluated)}")
        return trial_id
    candidates = trials[trials["trial_id"].isin(evaluated)].sort_values(
        ["best_val_acc", "trial_id"], ascending=[False, True], kind="stable")
    return candidates["trial_id"].iloc[0] if len(candidates) else evaluated[0]


def confusion(confusion_counts: pd.DataFrame, trials: pd.DataFrame, trial_id: str | None = None,
              top_pairs: int = 5) -> Confusion:
    """The confusion matrix of one evaluated trial, with precision, recall and F1 per class."""
    trial_id = chosen_trial(confusion_counts, trials, trial_id)
    counts = confusion_counts[confusion_counts["trial_id"] == trial_id]
    labels = range(len(CLASSES))
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    np.add.at(matrix, (counts["true_label"].to_numpy(int), counts["pred_label"].to_numpy(int)),
              counts["count"].to_numpy(np.int64))
    true_pos = np.diag(matrix).astype(float)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, np.nan)
        recall = np.where(support > 0, true_pos / support, np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        f1 = np.where(np.isnan(precision) | np.isnan(recall), np.nan, f1)
    per_class = pd.DataFrame({"label": list(labels), "class": list(CLASSES), "precision": precision,
                              "recall": recall, "f1": f1, "support": support})
    off_diagonal = [(matrix[t, p], t, p) for t in labels for p in labels if t != p and matrix[t, p] > 0]
    off_diagonal.sort(key=lambda item: (-item[0], item[1], item[2]))
    pairs = pd.DataFrame(
        [{"true_class": CLASSES[t], "pred_class": CLASSES[p], "count": int(n), "share": n / support[t]}
         for n, t, p in off_diagonal[:top_pairs]],
        columns=["true_class", "pred_class", "count", "share"])
    frame = pd.DataFrame(matrix, index=pd.Index(CLASSES, name="true"), columns=pd.Index(CLASSES, name="predicted"))
    return Confusion(trial_id, frame, per_class, pairs)


def _matches(trials: pd.DataFrame, where: dict) -> pd.Series:
    """Rows whose config has every `where` value (floats compared with a relative 1e-9)."""
    mask = pd.Series(True, index=trials.index)
    for key, value in where.items():
        if key not in trials.columns:
            return pd.Series(False, index=trials.index)
        column = trials[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and pd.api.types.is_numeric_dtype(column):
            mask &= pd.Series(np.isclose(column.astype(float), float(value), rtol=1e-9, atol=0), index=trials.index)
        else:
            mask &= column.map(lambda v: v == value)
    return mask


def _describe(config: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def reported_vs_run(trials: pd.DataFrame, reported: list[dict]) -> pd.DataFrame:
    """One row per figure the source seed reported, with this run's value beside it.

    Each entry of `reported` (a study's `Reported`, as stored in run.json) names the
    trials it is about (`where`), the seed's figures and, where the seed searched, its
    chosen configuration. This run's figures come from the configuration with the best
    mean validation accuracy among the matching trials (the test set never picks), as
    means over its seeds. Columns: where, figure, seed, run, seed_chose, run_chose,
    n (seeds behind the run's value), note, trials (how many of this run's trials
    match `where`: 0 where the run left them out, e.g. by --set), seed_epochs (how long
    the seed trained, NaN where it does not say) and run_epochs (the epochs this run's
    pick trained: fewer than the seed's where ASHA stopped it or --max-epochs cut it,
    and then its figures are not the seed's figures). `run` is NaN where the run has
    no such trial or the figure is missing (test_acc of a trial not evaluated).
    """
    rows = []
    for entry in reported:
        where, chosen = dict(entry.get("where", {})), dict(entry.get("chosen", {}))
        matched = trials[_matches(trials, where)]
        group = matched.iloc[0:0]
        if matched["best_val_acc"].notna().any():
            top = configurations(matched, "best_val_acc").iloc[0]
            group = matched[matched["trial_id"].isin(top["trial_ids"].split(","))]
        run_chose = _describe({k: _plain(group.iloc[0][k]) for k in chosen if k in group.columns}) if len(group) else ""
        run_epochs = group["epochs"].mean() if len(group) and "epochs" in group.columns else np.nan
        seed_epochs = entry.get("epochs")  # absent from runs made before it was recorded
        for figure, value in entry.get("figures", {}).items():
            run_value = group[figure].mean() if len(group) and figure in group.columns else np.nan
            rows.append({"where": _describe(where), "figure": figure, "seed": value, "run": run_value,
                         "seed_chose": _describe(chosen), "run_chose": run_chose,
                         "n": int(group[figure].notna().sum()) if figure in group.columns else 0,
                         "note": entry.get("note", ""), "trials": len(matched),
                         "seed_epochs": np.nan if seed_epochs is None else seed_epochs, "run_epochs": run_epochs})
    return pd.DataFrame(rows, columns=["where", "figure", "seed", "run", "seed_chose", "run_chose", "n", "note",
                                       "trials", "seed_epochs", "run_epochs"])


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
