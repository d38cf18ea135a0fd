"""Did `tunefm replay` predict a real search? Replay a stopping rule on a --no-early-stop run
and compare it, trial by trial (matched on their configs), with a real search of the same
study under that rule.

    python benchmarks/replay_check.py FULL_RUN REAL_RUN --objectives val_acc:max,time_per_epoch_s:min \
        --reduction-factor 3 --concurrency 1

Prints a markdown table: epochs trained, the pick and its regret, and the hypervolume of the
front of the trials trained to the end, as predicted and as the real search did it, the
real search's trials read on the full run's curves (the same configs and seeds train to the
same numbers; only their measured times differ). Needs no Ray.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from tunefm.analysis import replay, replay_report
from tunefm.run import store
from tunefm.run.trial_summary import config_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("full_run", type=Path)
    parser.add_argument("real_run", type=Path)
    parser.add_argument("--objectives", default="val_acc:max,time_per_epoch_s:min")
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    full, real = store.load_run(args.full_run), store.load_run(args.real_run)
    curves, (_, predicted) = replay.replay(full, args.scheduler, args.grace_period, args.reduction_factor,
                                           args.objectives, args.concurrency)
    keys = config_columns(full.trials)
    trial_of = {tuple(row[k] for k in keys): row["trial_id"] for row in full.trials.to_dict("records")}
    real_epochs = {trial_of[tuple(row[k] for k in keys)]: int(row["epochs"]) for row in real.trials.to_dict("records")}
    as_real = replay.judged(curves, predicted.setting, real_epochs, {}, math.nan)
    same = sum(predicted.epochs[t] == n for t, n in real_epochs.items())
    print(f"Replay of {predicted.setting.label()} on {args.full_run.name} ({len(curves.order)} trials) against "
          f"the search {args.real_run.name}: {same} of {len(real_epochs)} trials trained the predicted epochs.\n")
    rows = [("epochs", predicted.total_epochs, as_real.total_epochs),
            ("share of the full run's epochs", f"{predicted.total_epochs / predicted.run_epochs:.1%}",
             f"{as_real.total_epochs / as_real.run_epochs:.1%}"),
            ("pick (best val acc seen)", describe(curves, predicted.pick), describe(curves, as_real.pick)),
            ("its val acc", f"{predicted.pick_val_acc:.4f}", f"{as_real.pick_val_acc:.4f}"),
            ("regret", f"{predicted.regret:.4f}", f"{as_real.regret:.4f}")]
    if predicted.hypervolume_ratio is not None:
        rows.append(("hypervolume ratio", f"{predicted.hypervolume_ratio:.4f}", f"{as_real.hypervolume_ratio:.4f}"))
        rows.append(("trials on the full front kept", f"{len(set(predicted.front) & set(predicted.full_front))}"
                     f"/{len(predicted.full_front)}", f"{len(set(as_real.front) & set(as_real.full_front))}"
                     f"/{len(as_real.full_front)}"))
    print("| | replay (predicted) | real search |\n|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a} | {b} |")
    differing = sorted(t for t, n in real_epochs.items() if predicted.epochs[t] != n)
    if differing:
        print("\nTrials that trained other epochs than predicted (predicted / real):")
        for t in differing:
            print(f"- {describe(curves, t)}: {predicted.epochs[t]} / {real_epochs[t]}")


def describe(curves: replay.Curves, trial_id: str | None) -> str:
    if trial_id is None:
        return "-"
    row = curves.trials.loc[curves.trials["trial_id"] == trial_id].iloc[0]
    return " ".join(f"{k}={row[k]}" for k in replay_report.varied_keys(curves))


if __name__ == "__main__":
    main()
