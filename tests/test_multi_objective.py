"""Searches that know what accuracy costs, through real Ray Tune searches on slices of the
real data: Optuna's samplers on one and two objectives, MO-ASHA in unfused and fused
searches (each trial it stops keeps its rung), and `tunefm replay` predicting a real
search's early stopping exactly at --concurrency 1."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from tunefm.analysis import replay
from tunefm.cli import main
from tunefm.run import store
from tunefm.stopping import rules
from tunefm.tune.search import run
from tunefm.tune.settings import SearchSettings

pytestmark = pytest.mark.slow

OPTUNA_STUDY = """from ray import tune
from tunefm.study import Study
STUDY = Study(name="opt-{sampler}", description="", searcher="optuna", sampler="{sampler}", num_samples=4,
              initial_points=2, max_epochs=2, fixed={{"model": "iaro1"}},
              space={{"lr": tune.loguniform(1e-3, 0.1), "momentum": tune.uniform(0.5, 0.95),
                     "batch_size": tune.choice([32, 128])}})
"""
TWO = "val_acc:max,time_per_epoch_s:min"


def search(tmp_path, data_dir, name, **options):
    settings = SearchSettings(results_dir=str(tmp_path), data_dir=str(data_dir), name=name, train_size=400,
                              val_size=200, test_top=0, loop="plain", **options)
    return store.load_run(run(settings, echo=lambda line: None).run_dir)


@pytest.mark.parametrize("sampler, objectives", [("tpe", None), ("tpe", TWO), ("gp", None), ("gp", TWO),
                                                 ("cmaes", None), ("nsga2", TWO)])
def test_an_optuna_study_runs_with_each_sampler(tmp_path, data_dir, ray_session, sampler, objectives):
    path = tmp_path / f"{sampler}.py"
    path.write_text(OPTUNA_STUDY.format(sampler=sampler))
    loaded = search(tmp_path, data_dir, "run", space=str(path), objectives=objectives, reduction_factor=2)
    trials = loaded.trials
    assert len(trials) == 4 and (trials.status == "TERMINATED").all()
    assert trials.lr.between(1e-3, 0.1).all() and trials.momentum.between(0.5, 0.95).all()
    assert loaded.info["study"]["sampler"] == sampler and loaded.info["options"]["objectives"] == objectives
    assert (trials.stopped_early == trials.stopped_at_rung.notna()).all()
    assert (trials.loc[trials.stopped_early, "stopped_at_rung"] == 1).all()  # rungs at 1 (and 2, the end)


def test_mo_asha_in_a_fused_search_records_each_stop_and_its_rung(tmp_path, data_dir, ray_session):
    loaded = search(tmp_path, data_dir, "fused", space="fourfam", max_epochs=4, fuse="on", reduction_factor=2,
                    objectives="val_acc:max,params:min",
                    sets=("model=iaro1,iaro2", "lr=0.01,0.001", "batch_size=64,256"))
    trials = loaded.trials
    assert len(trials) == 8 and trials.execution.str.startswith("fused:").all()
    stopped = trials[trials.stopped_early]
    assert len(stopped) and (trials.stopped_early == trials.stopped_at_rung.notna()).all()
    assert set(stopped.stopped_at_rung) <= {1, 2} and (stopped.epochs == stopped.stopped_at_rung).all()
    assert (trials.loc[~trials.stopped_early, "epochs"] == 4).all()
    # the front is against the search's objectives (params, not the default s/epoch), and says what stopped whom
    shown = CliRunner().invoke(main, ["summarize", str(loaded.run_dir), "--section", "pareto", "--include-stopped"])
    assert shown.exit_code == 0, shown.output
    assert "Pareto front: val acc (higher is better) vs params (lower is better)" in shown.output
    assert f"({len(stopped)} stopped early by MO-ASHA, marked *" in " ".join(shown.output.split())  # wrapped
    headers = [line.split() for line in shown.output.splitlines() if line.startswith("trial ")]
    assert headers[0][-1] == "epochs" and headers[1][-1] == "rung"  # the front, then the stopped ones with their rung
    for trial in stopped.itertuples():
        line = next(line for line in shown.output.splitlines() if line.startswith(trial.trial_id))
        assert line.split()[-1] == str(trial.stopped_at_rung) and f"{trial.epochs}*" in line, line


GRID = ("model=iaro1", "lr=0.001,0.005,0.02,0.08", "batch_size=32,128,512")


def by_config(trials: pd.DataFrame, column: str) -> dict:
    return {(r.lr, r.batch_size): getattr(r, column) for r in trials.itertuples()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data_dir, ray_session):
    """GRID's 12 trials to the end (--no-early-stop), one at a time: what both replays read."""
    full = search(tmp_path_factory.mktemp("full"), data_dir, "full", space="fourfam", max_epochs=4, sets=GRID,
                  early_stop=False, concurrency=1, fuse="off")
    assert (full.trials.epochs == 4).all()
    return full


@pytest.mark.parametrize("objectives", ["val_acc:max", "val_acc:max,train_loss:min"])
def test_replay_gives_every_trial_the_epochs_a_real_search_gives_it(full_run, tmp_path, data_dir, objectives):
    """A --no-early-stop run of 12 trials, replayed with ASHA (or MO-ASHA on two objectives whose
    values do not depend on timing), equals a real search of the same study, seed and settings,
    both one trial at a time: every trial's epochs, and the rung of every stop."""
    full = full_run
    real = search(tmp_path, data_dir, "real", space="fourfam", max_epochs=4, sets=GRID, concurrency=1, fuse="off",
                  reduction_factor=2, objectives=objectives)
    # the same curves: the replay stands on the same numbers the real search judged
    merged = full.epochs.merge(real.epochs, on=["lr", "batch_size", "epoch"], suffixes=("", "_real"))
    assert (merged.val_acc == merged.val_acc_real).all() and (merged.train_loss == merged.train_loss_real).all()

    result = CliRunner().invoke(main, ["replay", str(full.run_dir), "--objectives", objectives,
                                       "--reduction-factor", "2", "--json"])
    assert result.exit_code == 0, result.output
    as_run, rule = json.loads(result.output)["settings"]
    replayed = {tid: t["epochs"] for tid, t in rule["trials"].items()}
    rungs = {tid: t["stopped_at_rung"] for tid, t in rule["trials"].items()}
    configs = full.trials.set_index("trial_id")[["lr", "batch_size"]]
    predicted = {(configs.lr[t], configs.batch_size[t]): n for t, n in replayed.items()}
    assert predicted == by_config(real.trials, "epochs")
    assert {(configs.lr[t], configs.batch_size[t]): r for t, r in rungs.items() if r} == {
        k: v for k, v in by_config(real.trials, "stopped_at_rung").items() if not pd.isna(v)}
    assert real.trials.stopped_early.sum() > 0 and rule["epochs"] == real.trials.epochs.sum() < as_run["epochs"]
    assert rule["scheduler"] == ("asha" if "," not in objectives else "mo-asha")
    assert set(rungs.values()) - {None} <= set(rules.milestones(4, 1, 2))
    # and the real run itself replays to its own epochs at its own setting
    again = replay.simulate(replay.Curves.of(real), replay.Setting(rule["scheduler"], 1, 2,
                                                                   replay.parse(objectives), 1))
    assert again.epochs == dict(zip(real.trials.trial_id, real.trials.epochs))
