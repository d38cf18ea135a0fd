"""The analysis functions on small DataFrames built by hand: ties, single trials, one epoch."""

import itertools

import numpy as np
import pandas as pd
import pytest

from tunefm.analysis import queries
from tunefm.engine.data import CLASSES
from tunefm.errors import UserError
from tunefm.run import ranking


def trials_frame(rows):
    """A trials table as store writes it, from dicts giving the columns that matter."""
    base = {"status": "TERMINATED", "stopped_early": False, "epochs": 3, "model": "m1", "lr": 0.01,
            "batch_size": 32, "optimizer": "sgd", "seed": 0, "params": 1000, "best_val_acc": 0.5,
            "best_epoch": 1, "val_loss_at_best": 1.0, "min_train_loss": 0.9, "min_train_loss_epoch": 3,
            "final_train_loss": 0.9, "final_val_loss": 1.0, "overfit_gap": 0.1, "time_per_epoch_s": 1.0,
            "total_time_s": 3.0, "gpu_fraction": 0.25, "node_id": "n", "device": "cpu", "threads": 1,
            "test_acc": np.nan, "test_loss": np.nan}
    frame = pd.DataFrame([{**base, "trial_id": f"t{i}", **row} for i, row in enumerate(rows)])
    return frame[["trial_id", *base]]


# ---- pareto --------------------------------------------------------------------------------

def brute_force_front(frame, metric, cost):
    """The definition, literally: i is kept unless some j is >= on metric, <= on cost, one strictly."""
    keep = []
    for i, a in frame.iterrows():
        beaten = any((b[metric] >= a[metric] and b[cost] <= a[cost]) and (b[metric] > a[metric] or b[cost] < a[cost])
                     for j, b in frame.iterrows() if j != i)
        if not beaten:
            keep.append(a["trial_id"])
    return set(keep)


def test_pareto_keeps_ties_and_drops_equal_metric_at_higher_cost():
    trials = trials_frame([
        {"best_val_acc": 0.90, "total_time_s": 10},  # t0 front
        {"best_val_acc": 0.80, "total_time_s": 5},   # t1 front (cheapest)
        {"best_val_acc": 0.85, "total_time_s": 12},  # t2 beaten by t0
        {"best_val_acc": 0.70, "total_time_s": 5},   # t3 same cost as t1, lower acc
        {"best_val_acc": 0.90, "total_time_s": 10},  # t4 exact tie with t0: both stay
        {"best_val_acc": 0.95, "total_time_s": 30},  # t5 front (most accurate)
        {"best_val_acc": 0.90, "total_time_s": 11},  # t6 same acc as t0 but dearer
        {"best_val_acc": np.nan, "total_time_s": 1},  # t7 no result: not a candidate
    ])
    front = queries.pareto(trials, "best_val_acc", "total_time_s")
    assert front["trial_id"].tolist() == ["t1", "t0", "t4", "t5"]  # by cost, ties by acc
    assert front["total_time_s"].is_monotonic_increasing and front["best_val_acc"].is_monotonic_increasing
    assert list(front.columns) == ["trial_id", "model", "lr", "batch_size", "best_val_acc", "total_time_s", "epochs",
                                   "stopped_early"]


def test_pareto_single_trial_and_gpu_seconds():
    one = trials_frame([{"best_val_acc": 0.6, "total_time_s": 4.0, "gpu_fraction": 0.5}])
    assert queries.pareto(one, cost="gpu_seconds")[["trial_id", "gpu_seconds"]].values.tolist() == [["t0", 2.0]]
    two = trials_frame([{"best_val_acc": 0.9, "total_time_s": 10.0, "gpu_fraction": 0.25},   # 2.5 GPU s
                        {"best_val_acc": 0.8, "total_time_s": 4.0, "gpu_fraction": 1.0}])    # 4.0 GPU s
    assert queries.pareto(two, cost="gpu_seconds")["trial_id"].tolist() == ["t0"]
    assert queries.pareto(two, cost="total_time_s")["trial_id"].tolist() == ["t1", "t0"]
    with pytest.raises(UserError, match="--cost must be one of total_time_s, time_per_epoch_s, time_to_90_train_acc_s, params, "
                                        "gpu_seconds, got 'watts'"):
        queries.pareto(two, cost="watts")
    with pytest.raises(UserError, match="--metric 'nope' is not a numeric column"):
        queries.pareto(two, metric="nope")


@pytest.mark.parametrize("seed", range(5))
def test_pareto_equals_the_definition_on_random_trials_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    trials = trials_frame([{"best_val_acc": round(a, 1), "params": int(p)}
                           for a, p in zip(rng.uniform(0.5, 0.9, n), rng.integers(1, 8, n))])
    front = queries.pareto(trials, "best_val_acc", "params")
    assert set(front["trial_id"]) == brute_force_front(trials, "best_val_acc", "params")


# ---- best ------------------------------------------------------------------------------------

def test_best_averages_seeds_and_picks_the_best_mean():
    trials = trials_frame([
        # config A of m1: two seeds, mean 0.80
        {"seed": 0, "best_val_acc": 0.78, "test_acc": 0.77, "min_train_loss": 0.2, "time_per_epoch_s": 2.0},
        {"seed": 1, "best_val_acc": 0.82, "test_acc": np.nan, "min_train_loss": 0.4, "time_per_epoch_s": 4.0},
        # config B of m1: one lucky seed at 0.81 and one at 0.70: mean 0.755 < 0.80
        {"lr": 0.1, "seed": 0, "best_val_acc": 0.81},
        {"lr": 0.1, "seed": 1, "best_val_acc": 0.70},
        # m2: a single trial with one epoch
        {"model": "m2", "params": 50, "epochs": 1, "best_val_acc": 0.9, "min_train_loss_epoch": 1},
    ])
    best = queries.best(trials)
    assert best["model"].tolist() == ["m2", "m1"]  # best model first
    m1 = best.set_index("model").loc["m1"]
    assert m1.n == 2 and m1.lr == 0.01 and m1.best_val_acc == pytest.approx(0.80)
    assert m1.best_val_acc_std == pytest.approx(np.std([0.78, 0.82], ddof=1))
    assert m1.test_acc == 0.77 and m1.test_n == 1 and np.isnan(m1.test_acc_std)  # only one seed evaluated
    assert m1.min_train_loss == pytest.approx(0.3) and m1.time_per_epoch_s == 3.0
    assert m1.trial_ids == "t0,t1"
    m2 = best.set_index("model").loc["m2"]
    assert m2.n == 1 and np.isnan(m2.best_val_acc_std) and m2.params == 50 and m2.epochs == 1


def test_best_shows_other_varied_keys_and_ignores_trials_without_results():
    trials = trials_frame([{"optimizer": "sgd", "best_val_acc": 0.6}, {"optimizer": "adam", "best_val_acc": 0.7},
                           {"optimizer": "adam", "lr": 0.1, "best_val_acc": np.nan, "epochs": 0}])
    best = queries.best(trials)
    assert len(best) == 1 and best.loc[0, "optimizer"] == "adam" and best.loc[0, "trial_ids"] == "t1"


# ---- top configurations for the test set ----------------------------------------------------

def test_top_configs_takes_every_seed_of_the_top_k_per_model_by_validation_only():
    rows = []
    for model, lr, seed in itertools.product(["m1", "m2"], [0.1, 0.01, 0.001], [0, 1]):
        rows.append({"model": model, "lr": lr, "seed": seed, "best_val_acc": 0.5 + lr + 0.001 * seed})
    trials = trials_frame(rows + [{"model": "m3", "best_val_acc": np.nan, "epochs": 0}])
    chosen = ranking.top_configs(trials, 2)
    expected = trials[trials["lr"].isin([0.1, 0.01]) & trials["model"].isin(["m1", "m2"])]["trial_id"]
    assert chosen == sorted(expected)
    # The test set cannot change the choice.
    trials["test_acc"] = np.where(trials["lr"] == 0.001, 0.99, 0.1)
    assert ranking.top_configs(trials, 2) == chosen
    assert ranking.top_configs(trials, 0) == []
    assert len(ranking.top_configs(trials, 10)) == 12  # every configuration with a result


# ---- grid ------------------------------------------------------------------------------------

def test_grid_pivots_per_model_with_mean_over_seeds():
    rows = [{"model": m, "lr": lr, "batch_size": bs, "seed": s, "best_val_acc": lr * 10 + bs / 1000 + s * 0.01}
            for m, lr, bs, s in itertools.product(["m1", "m2"], [0.01, 0.05], [8, 64], [0, 1])]
    cells = queries.grid(trials_frame(rows))
    assert len(cells) == 8 and (cells["n"] == 2).all()
    table = queries.pivot(cells, "m1", "lr", "batch_size", "best_val_acc")
    assert table.loc[0.05, 64] == pytest.approx(0.5 + 0.064 + 0.005)
    assert list(table.index) == [0.01, 0.05] and list(table.columns) == [8, 64]
    high = queries.pivot(queries.grid(trials_frame(rows), agg="max"), "m2", "lr", "batch_size", "best_val_acc")
    assert high.loc[0.01, 8] == pytest.approx(0.1 + 0.008 + 0.01)
    by_seed = queries.grid(trials_frame(rows), "best_val_acc", rows="seed", cols="batch_size")
    assert set(by_seed.columns) == {"model", "seed", "batch_size", "best_val_acc", "n", "stopped"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(rows="width"), "--rows 'width' is not a config key of this run; valid: model, lr, batch_size, optimizer, seed"),
    (dict(rows="lr", cols="lr"), "--rows and --cols must differ, both are 'lr'"),
    (dict(agg="median"), "--agg must be mean, max or min, got 'median'"),
    (dict(metric="model"), "--metric 'model' is not a numeric column"),
])
def test_grid_rejects_bad_axes(kwargs, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        queries.grid(trials_frame([{}]), **kwargs)


# ---- overfit ---------------------------------------------------------------------------------

def epochs_frame(curves):
    """trial id -> list of (train_loss, val_loss) per epoch."""
    return pd.DataFrame([{"trial_id": tid, "epoch": e, "train_loss": tl, "val_loss": vl}
                         for tid, curve in curves.items() for e, (tl, vl) in enumerate(curve, 1)])


def test_overfit_flags_rising_val_loss_only_while_train_loss_falls():
    trials = trials_frame([{}, {"lr": 0.1}, {"batch_size": 8}, {"batch_size": 8, "lr": 0.1}, {"lr": 0.5}])
    epochs = epochs_frame({
        "t0": [(1.0, 0.9), (0.6, 0.5), (0.4, 0.6), (0.2, 0.7)],   # val +40% over its min, train falling
        "t1": [(1.0, 0.9), (0.6, 0.5), (0.7, 0.55)],             # val +10% but train rose again
        "t2": [(0.8, 0.7)],                                      # a single epoch
        "t3": [(1.0, 0.9), (0.6, 0.5), (0.5, 0.55)],             # exactly +10%, train falling
        "t4": [(np.nan, np.nan), (np.nan, np.nan)],              # diverged
    })
    gaps = queries.overfit(trials, epochs).set_index("trial_id")
    t0, t1, t2, t3, t4 = (gaps.loc[f"t{i}"] for i in range(5))
    assert t0.overfitting and t0.min_val_loss_epoch == 2 and t0.epochs_past_min == 2
    assert t0.gap == pytest.approx(0.5) and t0.final_train_loss == 0.2 and t0.val_rise == pytest.approx(0.4)
    assert not t1.overfitting and t1.val_rise == pytest.approx(0.1)
    assert not t2.overfitting and t2.min_val_loss_epoch == 1 and t2.epochs_past_min == 0 and t2.epochs == 1
    assert t3.overfitting
    assert not t4.overfitting and pd.isna(t4.min_val_loss_epoch) and np.isnan(t4.gap)
    grid = queries.overfit_grid(gaps.reset_index()).set_index(["lr", "batch_size"])
    assert grid.loc[(0.01, 32), "mean_gap"] == pytest.approx(0.5) and grid.loc[(0.01, 32), "overfitting"] == 1
    assert grid.loc[(0.1, 8), "n"] == 1 and grid.loc[(0.1, 8), "mean_gap"] == pytest.approx(0.05)


def test_overfit_skips_trials_without_epochs():
    trials = trials_frame([{}, {"epochs": 0}])
    gaps = queries.overfit(trials, epochs_frame({"t0": [(0.5, 0.6)]}))
    assert gaps["trial_id"].tolist() == ["t0"]
    assert queries.overfit(trials, epochs_frame({})).empty


# ---- confusion -------------------------------------------------------------------------------

def counts_frame(trial_id, matrix):
    return pd.DataFrame([{"trial_id": trial_id, "true_label": t, "pred_label": p, "count": int(matrix[t, p])}
                         for t in range(10) for p in range(10)])


def test_confusion_scores_and_most_confused_pairs():
    matrix = np.diag([90] * 10)
    matrix[6, 0], matrix[0, 6], matrix[4, 2] = 30, 10, 5  # shirts called T-shirts, and back
    matrix[8, 8] = 0  # no bag ever predicted correctly or at all
    counts = pd.concat([counts_frame("t0", matrix), counts_frame("t1", np.eye(10, dtype=int))])
    trials = trials_frame([{"best_val_acc": 0.9}, {"best_val_acc": 0.8}])
    result = queries.confusion(counts, trials)
    assert result.trial_id == "t0"  # the evaluated trial with the best val acc
    scores = result.per_class.set_index("class")
    shirt, tshirt = scores.loc["Shirt"], scores.loc["T-shirt/top"]
    assert shirt.support == 120 and shirt.recall == pytest.approx(90 / 120)
    assert shirt.precision == pytest.approx(90 / 100)
    assert shirt.f1 == pytest.approx(2 * 0.9 * 0.75 / 1.65)
    assert tshirt.precision == pytest.approx(90 / 120) and tshirt.recall == pytest.approx(90 / 100)
    assert np.isnan(scores.loc["Bag"].precision) and np.isnan(scores.loc["Bag"].f1)
    assert result.pairs.iloc[0].tolist() == ["Shirt", "T-shirt/top", 30, pytest.approx(0.25)]
    assert result.pairs[["true_class", "pred_class"]].values.tolist() == [
        ["Shirt", "T-shirt/top"], ["T-shirt/top", "Shirt"], ["Coat", "Pullover"]]
    assert list(result.matrix.columns) == list(CLASSES) and result.matrix.loc["Shirt", "T-shirt/top"] == 30
    assert queries.confusion(counts, trials, "t1").accuracy == 1.0


def test_confusion_errors_name_the_evaluated_trials():
    counts = counts_frame("t0", np.eye(10, dtype=int))
    trials = trials_frame([{}, {}])
    with pytest.raises(UserError, match="--trial 't1' has no test-set evaluation; evaluated trials: t0"):
        queries.confusion(counts, trials, "t1")
    with pytest.raises(UserError, match="no trial of this run has a test-set evaluation; run `tunefm evaluate RUN`"):
        queries.confusion(counts.iloc[:0], trials)


def test_losses_and_times_count_as_better_low():
    assert queries.higher_is_better("best_val_acc") and queries.higher_is_better("test_acc")
    assert not any(map(queries.higher_is_better, ["val_loss_at_best", "overfit_gap", "time_per_epoch_s", "params"]))
    trials = trials_frame([{"lr": 0.1, "val_loss_at_best": 0.5, "total_time_s": 10},
                           {"lr": 0.2, "val_loss_at_best": 0.7, "total_time_s": 5},
                           {"lr": 0.3, "val_loss_at_best": 0.6, "total_time_s": 12},
                           {"model": "m2", "val_loss_at_best": 0.9}])
    front = queries.pareto(trials, "val_loss_at_best", "total_time_s")
    assert front["trial_id"].tolist() == ["t3", "t1", "t0"]  # t2 is dearer than t0 and has a higher loss
    assert set(front.trial_id) == brute_force_front(trials.assign(neg=-trials.val_loss_at_best), "neg", "total_time_s")
    best = queries.best(trials, "val_loss_at_best")
    assert best.set_index("model").loc["m1", "val_loss_at_best"] == 0.5  # the lowest loss
    assert best["model"].tolist() == ["m1", "m2"]


# ---- seed reported vs this run -------------------------------------------------------------

def test_reported_vs_run_uses_the_best_validation_config_among_matching_trials():
    trials = trials_frame([
        {"model": "a", "lr": 0.1, "best_val_acc": 0.80, "test_acc": 0.79, "seed": 0},
        {"model": "a", "lr": 0.1, "best_val_acc": 0.84, "test_acc": 0.81, "seed": 1},   # mean 0.82
        {"model": "a", "lr": 0.01, "best_val_acc": 0.81, "test_acc": 0.95, "seed": 0},  # best test, not picked
        {"model": "b", "lr": 0.1, "best_val_acc": 0.70},
    ]).assign(epochs=[10, 4, 10, 1])
    reported = [
        {"where": {"model": "a"}, "figures": {"best_val_acc": 0.9, "test_acc": 0.88}, "chosen": {"lr": 0.01},
         "note": "", "epochs": 100},
        {"where": {"model": "b", "lr": 0.1}, "figures": {"test_acc": 0.7}, "chosen": {}, "note": "fixed"},
        {"where": {"model": "c"}, "figures": {"test_acc": 0.5}, "chosen": {}, "note": ""},
    ]
    table = queries.reported_vs_run(trials, reported)
    assert table["where"].tolist() == ["model=a", "model=a", "model=b lr=0.1", "model=c"]
    a_acc, a_test, b_test, c_test = table.to_dict("records")
    assert a_acc["seed"] == 0.9 and a_acc["run"] == pytest.approx(0.82) and a_acc["n"] == 2
    assert a_test["run"] == pytest.approx(0.80)  # the test set never picks the configuration
    assert a_acc["seed_chose"] == "lr=0.01" and a_acc["run_chose"] == "lr=0.1"
    assert np.isnan(b_test["run"]) and b_test["n"] == 0 and b_test["note"] == "fixed"  # not evaluated
    assert np.isnan(c_test["run"]) and c_test["trials"] == 0  # no such trial in this run
    assert (a_acc["trials"], b_test["trials"]) == (3, 1)
    assert a_acc["seed_epochs"] == 100 and a_acc["run_epochs"] == 7  # the pick's two seeds trained 10 and 4
    assert np.isnan(b_test["seed_epochs"]) and b_test["run_epochs"] == 1  # the seed did not say; ASHA stopped it
    assert queries.reported_vs_run(trials, []).empty


# ---- grid axes ------------------------------------------------------------------------------

def test_grid_axes_are_lr_and_batch_size_where_they_vary_else_the_studys_varied_keys():
    lr_by_batch = trials_frame([{"lr": lr, "batch_size": b} for lr in (0.01, 0.1) for b in (8, 64)])
    assert queries.grid_axes(lr_by_batch) == ("lr", "batch_size")
    # seed 004's architecture grid: lr and batch size fixed, five architecture keys vary
    grid = pd.DataFrame([{"conv1_kernel": k, "conv1_filters": f, "dense": d, "seed": s}
                         for k in (3, 5) for f in (8, 16) for d in (64, 100) for s in (0, 1)])
    architectures = trials_frame([{"seed": s} for s in grid["seed"]]).assign(**{k: grid[k] for k in grid})
    assert queries.grid_axes(architectures) == ("conv1_kernel", "conv1_filters")  # table order; seeds average
    assert queries.grid_axes(architectures, order=["dense", "conv1_kernel"]) == ("dense", "conv1_kernel")
    assert queries.grid_axes(architectures, rows="conv1_filters") == ("conv1_filters", "conv1_kernel")
    assert queries.grid_axes(architectures, cols="dense") == ("conv1_kernel", "dense")
    lr_only = trials_frame([{"lr": lr} for lr in (0.01, 0.1)])
    assert queries.grid_axes(lr_only) == ("lr", "batch_size")  # nothing else varies: a column of one
    cells = queries.grid(architectures.assign(best_val_acc=np.arange(16) / 16), "best_val_acc",
                          *queries.grid_axes(architectures, order=["conv1_kernel", "dense"]), agg="max")
    assert len(cells) == 4 and cells["best_val_acc"].max() == 15 / 16 and (cells["n"] == 4).all()
