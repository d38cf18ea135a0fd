"""Hyperparameter importance (tunefm/analysis/importance.py): an exact ANOVA on full-factorial grids,
checked against statsmodels run directly on trials.parquet and against sums of squares
computed by hand; Optuna's fANOVA and PED-ANOVA for everything else."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tunefm.analysis import importance
from tunefm.cli import main
from tunefm.errors import UserError
from tunefm.run import store


def hand_made_grid(seeds: int = 3, noise: float = 0.01, drop: int = 0) -> pd.DataFrame:
    """2 lr x 3 batch sizes x `seeds` seeds: a strong lr effect, a weaker batch effect, an
    lr x batch interaction in one cell, and seed noise."""
    rng = np.random.default_rng(0)
    rows = []
    for (lr, lr_effect), (batch, batch_effect), seed in itertools.product(
            [(0.01, 0.0), (0.1, 0.10)], [(16, 0.0), (64, 0.02), (256, -0.03)], range(seeds)):
        value = 0.7 + lr_effect + batch_effect + (0.02 if (lr, batch) == (0.1, 256) else 0.0)
        rows.append({"trial_id": f"t{len(rows)}", "status": "TERMINATED", "stopped_early": seed == 0 and lr == 0.01,
                     "model": "iaro1", "lr": lr, "batch_size": batch, "seed": seed,
                     "best_val_acc": value + noise * rng.standard_normal()})
    return pd.DataFrame(rows).iloc[drop:].reset_index(drop=True)


def test_a_full_factorial_grid_gets_an_exact_anova_that_adds_up():
    trials = hand_made_grid()
    result = importance.importance(trials)
    assert result.method == "anova" and result.factors == ["lr", "batch_size"] and result.seeds == 3
    table = result.table.set_index("term")
    assert list(table.index) == ["lr", "batch_size", "lr x batch_size", "seed-to-seed noise"]
    assert table["share"].sum() == pytest.approx(1.0)
    assert table.loc["lr", "share"] > table.loc["batch_size", "share"] > table.loc["seed-to-seed noise", "share"]
    # By hand, for a balanced design: a main effect is n x sum of squared level-mean deviations;
    # the seed noise is the spread of each grid point's seeds around their own mean.
    y, grand = trials["best_val_acc"], trials["best_val_acc"].mean()
    for factor in ("lr", "batch_size"):
        means = trials.groupby(factor)["best_val_acc"].agg(["mean", "size"])
        assert table.loc[factor, "sum_sq"] == pytest.approx(float((means["size"] * (means["mean"] - grand) ** 2).sum()))
    cell = trials.groupby(["lr", "batch_size"])["best_val_acc"].transform("mean")
    assert table.loc["seed-to-seed noise", "sum_sq"] == pytest.approx(float(((y - cell) ** 2).sum()))
    assert table.loc["seed-to-seed noise", "df"] == 6 * 2
    assert table.loc["lr", "p"] < 1e-6 and table.loc["lr x batch_size", "df"] == 2
    assert result.stopped_early == 3 and any("stopped early by ASHA" in line for line in result.notes())


def test_a_grid_with_a_hole_gets_fanova_and_anova_is_refused():
    trials = hand_made_grid(drop=1)
    with pytest.raises(UserError, match=r"^--importance-method anova needs a full-factorial grid \(every combination "
                                        r"of lr, batch_size the same number of times\); use fanova or ped-anova"):
        importance.importance(trials, method="anova")
    result = importance.importance(trials)
    assert result.method == "fanova" and list(result.table.columns) == ["term", "share"]
    assert result.table["share"].sum() == pytest.approx(1.0) and result.table["term"].iloc[0] == "lr"


@pytest.mark.parametrize("method", ["fanova", "ped-anova"])
def test_optunas_evaluators_find_the_key_that_matters_in_a_drawn_study(method):
    """A random-search-like study: lr drawn log-uniformly decides the metric, momentum and the
    batch size do not."""
    rng = np.random.default_rng(1)
    lr = 10 ** rng.uniform(-4, -1, 60)
    trials = pd.DataFrame({"trial_id": [f"t{i}" for i in range(60)], "status": "TERMINATED", "model": "iaro1",
                           "lr": lr, "momentum": rng.uniform(0.5, 0.95, 60),
                           "batch_size": rng.choice([32, 64, 128], 60), "seed": 0,
                           "best_val_acc": 0.5 + 0.1 * np.log10(lr) / 3 + 0.002 * rng.standard_normal(60)})
    result = importance.importance(trials, method=method)
    assert result.method == method and result.table["term"].iloc[0] == "lr"
    assert result.table.set_index("term").loc["lr", "share"] > 0.5
    assert result.table["share"].sum() == pytest.approx(1.0)


def assert_matches_statsmodels(run_dir) -> pd.DataFrame:
    """`summarize --section importance --format json` against an ANOVA run directly on the
    run's trials.parquet; returns the summary's rows by term."""
    output = CliRunner().invoke(main, ["summarize", str(run_dir), "--section", "importance", "--format", "json"])
    assert output.exit_code == 0, output.output
    rows = pd.DataFrame(json.loads(output.output)["importance"]).set_index("term")
    assert set(rows["method"]) == {"anova"} and rows["share"].sum() == pytest.approx(1.0)
    import statsmodels.api as sm  # a second of every worker's start-up where imported at the top
    from statsmodels.formula.api import ols

    trials = pd.read_parquet(run_dir / store.TRIALS_FILE)
    for column in ("model", "lr", "batch_size"):
        trials[column] = trials[column].astype(str)
    direct = sm.stats.anova_lm(ols("best_val_acc ~ C(model) + C(lr) + C(batch_size) + C(lr):C(batch_size)",
                                   data=trials).fit(), typ=2)
    total = ((trials.best_val_acc - trials.best_val_acc.mean()) ** 2).sum()
    for term, name in [("C(model)", "model"), ("C(lr)", "lr"), ("C(batch_size)", "batch_size"),
                       ("C(lr):C(batch_size)", "lr x batch_size"), ("Residual", "residual (other interactions)")]:
        assert rows.loc[name, "sum_sq"] == pytest.approx(direct.loc[term, "sum_sq"], rel=1e-9, abs=1e-12)
        assert rows.loc[name, "share"] == pytest.approx(direct.loc[term, "sum_sq"] / total, rel=1e-9, abs=1e-12)
    assert rows.loc["lr", "F"] == pytest.approx(direct.loc["C(lr)", "F"])
    assert (rows["stopped_early"] == int(trials.stopped_early.sum())).all()
    return rows


def test_small_fourfam_matches_statsmodels_on_its_own_trials_file(small_fourfam):
    assert_matches_statsmodels(small_fourfam)


def test_the_section_in_a_terminal_names_its_method_and_fits_80_columns(small_fourfam):
    text = CliRunner().invoke(main, ["summarize", str(small_fourfam), "--section", "importance"]).output
    assert "Hyperparameter importance: share of the variation in val acc" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    words = " ".join(text.split())  # the notes are wrapped at 80 columns
    assert "analysis of variance over the full-factorial grid" in words and "stopped early by ASHA" in words
    fanova = CliRunner().invoke(main, ["summarize", str(small_fourfam), "--section", "importance",
                                       "--importance-method", "fanova"]).output
    assert "fANOVA (Optuna" in fanova


def test_a_run_too_small_for_importance_says_so(tmp_path):
    from conftest import tiny_run

    run_dir = tiny_run(tmp_path / "run")
    everything = CliRunner().invoke(main, ["summarize", str(run_dir)])
    assert everything.exit_code == 0 and "importance needs at least 3 trials" in everything.output
    asked = CliRunner().invoke(main, ["summarize", str(run_dir), "--section", "importance"])
    assert asked.exit_code == 1 and asked.output.startswith("Error: importance needs at least 3 trials")
    bad = CliRunner().invoke(main, ["summarize", str(run_dir), "--importance-method", "shap"])
    assert bad.exit_code == 2 and bad.output.startswith("Error: Invalid value for '--importance-method'")


def test_the_cli_offers_exactly_the_librarys_methods():
    from tunefm import cli

    assert cli.IMPORTANCE_METHODS == importance.METHODS


def test_one_trial_per_cell_folds_the_interaction_into_the_residual():
    """2 lr x 3 batch sizes, one seed: the lr x batch_size interaction would leave no degree of
    freedom to test anything against, so it becomes the residual (and says so)."""
    result = importance.importance(hand_made_grid(seeds=1))
    table = result.table.set_index("term")
    assert result.method == "anova"
    assert list(table.index) == ["lr", "batch_size", "residual (lr x batch_size and other interactions)"]
    assert table.loc["residual (lr x batch_size and other interactions)", "df"] == 2
    assert table["share"].sum() == pytest.approx(1.0) and table.loc["lr", "F"] > 0


def test_a_search_in_progress_never_breaks_the_section():
    """While a search writes, the trials with a result are any subset of the grid: each is
    analysed by whichever method fits it, or the section says why it cannot be."""
    trials = hand_made_grid(seeds=1)
    for count in range(1, len(trials) + 1):
        part = trials.iloc[:count]
        try:
            result = importance.importance(part)
        except UserError as e:
            assert count < 3 and str(e).startswith("importance needs at least 3 trials"), (count, e)
            continue
        assert result.table["share"].sum() == pytest.approx(1.0), count
