"""Every bundled study runs: each of its configs trains one epoch on a slice of the real
data, and each study goes through a real Ray Tune search (grid, variants, hyperopt TPE,
and the README's random-search study)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from tunefm import study
from tunefm.cli import main
from tunefm.engine import data, solo
from tunefm.run import store
from tunefm.tune.search import run
from tunefm.tune.settings import SearchSettings

TINY = dict(max_epochs=1, train_size=256, val_size=128, test_size=256)


@pytest.fixture(scope="module")
def slice_arrays(data_dir):
    splits = data.load(data_dir, train_size=64, val_size=32, test_size=32)
    return {"train_x": splits.train_x, "train_y": splits.train_y, "val_x": splits.val_x, "val_y": splits.val_y}


def study_configs(loaded: study.Study) -> list[dict]:
    """A grid's configs; a study that draws its configs: its first points."""
    configs = loaded.search.configs(loaded)
    return configs if configs is not None else [{**loaded.base_config(), **p} for p in loaded.points_to_evaluate]


HEAVY_STUDIES = ("cnn5", "fourfam", "kernels")  # seconds each: the slow tier


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_STUDIES else n
                                  for n in study.available()])
def test_every_config_of_every_study_trains_one_epoch(name, slice_arrays):
    """Plain PyTorch, no Ray: the model, its options, init, output, augmentation and lr decay
    of every config work together."""
    torch.set_num_threads(1)
    configs = study_configs(study.load(name))
    assert configs
    for config in configs:
        [(metrics, state)] = list(solo.fit(config, slice_arrays, 1, torch.device("cpu")))
        assert metrics["epoch"] == 1 and np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["val_loss"])
        assert 0 <= metrics["val_acc"] <= 1


def search(tmp_path, data_dir, space, **options):
    settings = SearchSettings(space=space, results_dir=str(tmp_path), data_dir=str(data_dir),
                              **{**TINY, **options})
    outcome = run(settings, echo=lambda line: None)
    return outcome, store.load_run(outcome.run_dir)


@pytest.mark.slow
def test_cnn5_runs_table_1_and_tests_every_trial(tmp_path, data_dir, ray_session):
    # cnn1-3 have 4M weights: 64 images are as good as 256 for the table, and a third of the time
    outcome, loaded = search(tmp_path, data_dir, "cnn5", train_size=64, val_size=32, test_size=64)
    trials = outcome.trials
    assert len(trials) == 20 and (trials.epochs == 1).all() and (trials.status == "TERMINATED").all()
    assert trials.test_acc.notna().all()  # test_top=4 covers every config of every model
    reference = pd.DataFrame(json.loads(
        CliRunner().invoke(main, ["summarize", str(outcome.run_dir), "--section", "reference", "--format", "json"])
        .output)["reference"])
    assert len(reference) == 20 and reference.run.notna().all()
    row = reference[reference["where"] == "model=cnn2 augment=False output=softmax"].iloc[0]
    assert row.seed == 0.9025
    match = trials[(trials.model == "cnn2") & ~trials.augment.astype(bool) & (trials.output == "softmax")]
    assert row.run == match.test_acc.iloc[0]


@pytest.mark.slow
def test_hyperopt_study_starts_at_the_seeds_choice(tmp_path, data_dir, ray_session):
    outcome, loaded = search(tmp_path, data_dir, "cnn2-tpe", num_samples=3)
    trials = outcome.trials
    assert len(trials) == 3 and (trials.model == "cnn2").all() and trials.augment.astype(bool).all()
    seed_point = trials[(trials.lr == 0.0003593) & (trials.weight_decay == 0.0003593) & (trials.batch_size == 64)]
    assert len(seed_point) == 1
    assert loaded.info["study"]["searcher"] == "hyperopt"
    assert loaded.info["study"]["space"]["lr"] == "loguniform(1e-05, 0.01)"


@pytest.mark.slow
def test_hyperopt_proposals_stay_inside_the_declared_ranges(tmp_path, data_dir, ray_session):
    """A user's TPE study with 2 random starts: the other proposals come from TPE itself."""
    space_file = tmp_path / "tpe_space.py"
    space_file.write_text(textwrap.dedent('''
        """A TPE search over lr, momentum and batch size for iaro1."""
        from ray import tune
        from tunefm.study import Study

        STUDY = Study(
            name="tpe-iaro1", description="TPE on iaro1", searcher="hyperopt",
            space={"lr": tune.loguniform(1e-3, 0.2), "momentum": tune.uniform(0.5, 0.95),
                   "batch_size": tune.choice([16, 64])},
            fixed={"model": "iaro1", "optimizer": "sgd"},
            num_samples=8, initial_points=2, concurrency=2, max_epochs=2,
            points_to_evaluate=[{"lr": 0.05, "momentum": 0.9, "batch_size": 64}],
        )
    '''))
    outcome, _ = search(tmp_path / "results", data_dir, str(space_file), max_epochs=2)
    trials = outcome.trials
    assert len(trials) == 8 and (trials.status == "TERMINATED").all()
    assert trials.lr.between(1e-3, 0.2).all() and trials.momentum.between(0.5, 0.95).all()
    assert set(trials.batch_size) <= {16, 64}
    assert len(trials[(trials.lr == 0.05) & (trials.momentum == 0.9)]) == 1
    assert trials.lr.nunique() == 8  # TPE proposes new points, not repeats
    assert (trials.seed == 0).all()


@pytest.mark.slow
def test_regularize_baseline_and_better_each_run_their_own_epochs(tmp_path, data_dir, ray_session):
    outcome, loaded = search(tmp_path, data_dir, "regularize", max_epochs=3, early_stop=False)
    trials = outcome.trials.set_index("optimizer")
    assert trials.loc["sgd", "dropout"] == 0.0 and trials.loc["adam", "dropout"] == 0.5
    assert (trials.epochs == 3).all() and trials.max_epochs.tolist() == [3, 3]  # capped by --max-epochs
    assert trials.test_acc.notna().all()
    reference = loaded.info["study"]["reported"]
    assert [r["note"] for r in reference] == ["baseline", "better"]


@pytest.mark.slow
@pytest.mark.parametrize("space,sets,count", [
    ("optim", ("batch_size=64", "lr=0.01"), 6),
    ("kernels", ("conv1_filters=8", "conv2_filters=8", "dense=64"), 4),
    ("ladder", ("model=logreg,ann2,convnet3",), 3),
])
def test_seed_002_and_004_studies_run_on_ray(tmp_path, data_dir, ray_session, space, sets, count):
    outcome, _ = search(tmp_path, data_dir, space, sets=sets, early_stop=False)
    trials = outcome.trials
    assert len(trials) == count and (trials.epochs == 1).all() and (trials.status == "TERMINATED").all()
    assert "time_to_90_train_acc_s" in trials.columns
    if space == "optim":
        assert set(trials.init) == {"xavier_uniform", "xavier_normal", "kaiming_uniform"}
        assert (trials.params == 462_574).all() and trials.test_acc.notna().all()
    if space == "ladder":
        assert (trials.lr_decay == 0.9999).all()
        assert dict(zip(trials.model, trials.params)) == {"logreg": 7_850, "ann2": 269_322, "convnet3": 1_447_946}


@pytest.mark.slow
def test_a_study_file_in_the_documented_format_runs(tmp_path, data_dir, ray_session):
    """Written only from the README: a grid, variants with their own epochs, a model option,
    shared keys and reported figures; then summarize shows the figures beside the run's."""
    space_file = tmp_path / "my_study.py"
    space_file.write_text(textwrap.dedent('''
        """my-study: does dropout help the two-conv net at two learning rates?"""
        from tunefm.study import Reported, Study

        STUDY = Study(
            name="my-study",
            description="twoconv: short plain run vs. longer dropout-free run with Kaiming init",
            grid={"lr": [0.01, 0.05]},
            variants=[{"init": "default", "max_epochs": 1}, {"init": "kaiming_uniform", "max_epochs": 2}],
            fixed={"model": "twoconv", "conv1_filters": 8, "conv2_filters": 8, "dense": 32,
                   "batch_size": 32, "optimizer": "sgd", "momentum": 0.9, "augment": True},
            max_epochs=2,
            test_top=4,
            reported=[Reported(where={"init": "kaiming_uniform"}, figures={"test_acc": 0.88},
                               chosen={"lr": 0.01}, note="my notebook")],
        )
    '''))
    results = tmp_path / "results"
    result = CliRunner().invoke(main, [
        "search", "--space", str(space_file), "--results", str(results), "--data-dir", str(data_dir),
        "--train-size", "256", "--val-size", "128", "--test-size", "256", "--no-early-stop", "--name", "mine"])
    assert result.exit_code == 0, result.output
    assert "Seed reported" in result.output and "my notebook" in result.output
    trials = store.read_trials(results / "mine")
    assert len(trials) == 4
    epochs = dict(zip(zip(trials["init"], trials["lr"]), trials["epochs"]))
    assert epochs == {("default", 0.01): 1, ("default", 0.05): 1, ("kaiming_uniform", 0.01): 2,
                      ("kaiming_uniform", 0.05): 2}
    assert not trials.stopped_early.any()  # ending at its own max_epochs is not an early stop
    assert trials.test_acc.notna().all()
    shown = CliRunner().invoke(main, ["spaces", str(space_file)])
    assert shown.exit_code == 0 and "variant 2      init=kaiming_uniform, max_epochs=2" in shown.output


def readme_random_study() -> str:
    """The random-search study the README documents, as a user would copy it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if b.startswith('"""iaro2-random:')]
    return block


@pytest.mark.slow
def test_the_readmes_random_search_study_runs_inside_its_space(tmp_path, data_dir, ray_session):
    """Copied from the README and run with --seed 1 and --num-samples 6: every config inside
    the declared distributions, each drawn once, and the draws the seed gives."""
    from test_searchers import proposals

    space_file = tmp_path / "iaro2_random.py"
    space_file.write_text(readme_random_study())
    outcome, loaded = search(tmp_path / "results", data_dir, str(space_file), seed=1, num_samples=6)
    trials = outcome.trials
    assert len(trials) == 6 and (trials.status == "TERMINATED").all() and (trials.model == "iaro2").all()
    assert trials.lr.between(1e-3, 0.3).all() and trials.momentum.between(0.5, 0.95).all()
    assert set(trials.batch_size) <= {32, 64, 128} and trials.lr.nunique() == 6
    assert (trials.seed == 1).all() and (trials.optimizer == "sgd").all()
    assert loaded.info["study"]["searcher"] == "random" and loaded.info["study"]["num_trials"] == 6
    drawn = search_study(str(space_file), seed=1, num_samples=6)
    assert sorted(trials.lr) == sorted(c["lr"] for c in proposals(drawn, seed=1))
    # Its default grid: lr (drawn from a log-uniform range) in a few labelled ranges, batch size exact.
    grid = json.loads(CliRunner().invoke(main, ["summarize", str(outcome.run_dir), "--section", "grid",
                                                "--format", "json"]).output)["grid"]
    ranges = {cell["lr"] for cell in grid}
    assert 2 <= len(ranges) < 6 and sum(cell["n"] for cell in grid) == 6
    assert all(re.fullmatch(r"\[[\d.e-]+, [\d.e-]+[)\]]", label) for label in ranges), ranges
    assert {cell["batch_size"] for cell in grid} == set(trials.batch_size)


def search_study(space: str, **options) -> study.Study:
    from tunefm.tune.search import build_study

    return build_study(SearchSettings(space=space, **options))
