"""What `tunefm replay` shows: its outcomes as a table with a heading, for people, and as
plain records, for `--json` and scripts.

    curves, outcomes = replay.replay(store.load_run(run_dir), sweep_settings=True)
    print("\n".join(replay_report.heading(curves, outcomes)))
    print(tables.text_table(replay_report.table(curves, outcomes), index=False))
    json.dumps(replay_report.without_nan(replay_report.records(curves, outcomes)))
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from tunefm.analysis import queries, replay
from tunefm.run.trial_summary import config_columns
from tunefm.stopping.objectives import text as objectives_text


def records(curves: replay.Curves, outcomes: Sequence[replay.Outcome],
            per_trial: bool = True) -> list[dict[str, Any]]:
    """The outcomes as plain data (`--json`)."""
    baseline = {o.setting.concurrency: o for o in outcomes if o.setting.scheduler in ("none", replay.AS_RUN)}
    out = []
    for o in outcomes:
        record = {
            "scheduler": o.setting.scheduler, "grace_period": o.setting.grace_period,
            "reduction_factor": o.setting.reduction_factor, "objectives": objectives_text(o.setting.objectives),
            "concurrency": o.setting.concurrency, "epochs": o.total_epochs, "run_epochs": o.run_epochs,
            "epochs_fraction": o.total_epochs / o.run_epochs if o.run_epochs else math.nan,
            "wall_s": o.wall_s, "pick": pick_record(curves, o.pick, o.pick_val_acc, o.epochs.get(o.pick)),
            "run_best": pick_record(curves, o.best, o.best_val_acc, len(curves.histories.get(o.best, []))),
            "regret": o.regret, "hypervolume_ratio": o.hypervolume_ratio,
            "front": o.front, "full_front": o.full_front,
        }
        base_wall = baseline[o.setting.concurrency].wall_s if o.setting.concurrency in baseline else None
        if base_wall is not None:
            record["wall_fraction"] = o.wall_s / base_wall if base_wall else math.nan
        if per_trial:
            record["trials"] = {tid: {"epochs": n, "stopped_at_rung": o.stopped_at.get(tid)}
                                for tid, n in o.epochs.items()}
        out.append(record)
    return out


def pick_record(curves: replay.Curves, trial_id: str | None, val_acc: float,
                epochs: int | None) -> dict[str, Any] | None:
    if trial_id is None:
        return None
    row = curves.trials.loc[curves.trials["trial_id"] == trial_id].iloc[0]
    ran_to_end = epochs is not None and epochs >= curves.limits[trial_id]
    test = row.get("test_acc")
    return {"trial_id": trial_id, "config": {k: _plain(row[k]) for k in config_columns(curves.trials)
                                             if not _missing(row[k])},
            "val_acc": val_acc, "epochs": epochs,
            # the run's test figure is of the trial's best epoch over all its epochs: the same
            # pick only if it ran to the end
            "test_acc": float(test) if ran_to_end and not _missing(test) else None}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def varied_keys(curves: replay.Curves) -> list[str]:
    """The config keys that differ between trials (what tells one pick from another)."""
    return queries.varied_keys(curves.trials, exclude=())


def table(curves: replay.Curves, outcomes: Sequence[replay.Outcome]) -> pd.DataFrame:
    """One row per setting: what it trains, how long it takes, what it picks."""
    keys = varied_keys(curves)
    rows = []
    for record in records(curves, outcomes, per_trial=False):
        pick = record["pick"] or {"config": {}, "val_acc": math.nan, "test_acc": None}
        row = {
            "rule": replay.Setting(record["scheduler"], record["grace_period"], record["reduction_factor"], ()).label(),
            "epochs": f"{record['epochs']} ({record['epochs_fraction']:.0%})",
            "wall": f"{record['wall_s']:.1f} s" + (f" ({record['wall_fraction']:.0%})"
                                                   if not math.isnan(record.get("wall_fraction", math.nan)) else ""),
            "pick": " ".join(str(pick["config"].get(k, "-")) for k in keys) or pick.get("trial_id", "-"),
            "val acc": f"{pick['val_acc']:.4f}",
            "test acc": "-" if pick["test_acc"] is None else f"{pick['test_acc']:.4f}",
            "regret": f"{record['regret']:.4f}",
        }
        if record["hypervolume_ratio"] is not None:
            kept = len(set(record["front"]) & set(record["full_front"]))
            row["hypervolume"] = f"{record['hypervolume_ratio']:.4f} ({kept}/{len(record['full_front'])} of front)"
        rows.append(row)
    return pd.DataFrame(rows)


def heading(curves: replay.Curves, outcomes: Sequence[replay.Outcome]) -> list[str]:
    first = outcomes[-1].setting
    keys = varied_keys(curves)
    lines = [f"Replay on run {curves.run_name}: {len(curves.order)} trials, up to {curves.max_epochs} epochs, "
             f"{first.concurrency} at a time, in the run's order and epoch times.",
             f"Objectives: {objectives_text(first.objectives)}"
             + (" (asha judges the first; the hypervolume counts all)" if len(first.objectives) > 1
                and any(o.setting.scheduler == "asha" for o in outcomes) else "")]
    if keys:
        lines.append(f"pick: {' '.join(keys)} of the trial with the best val acc seen; regret: the run's best val "
                     f"acc ({outcomes[0].best_val_acc:.4f}) minus the pick's")
    if len(first.objectives) > 1:
        lines.append("hypervolume: of the trials trained to the end, over all trials' at the end, each objective "
                     "scaled to [0, 1] over all trials")
    return lines


def without_nan(value: Any) -> Any:
    """`value` with NaN as None, for JSON (which has no NaN)."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value
