"""Fronts and grids that stay honest under early stopping: which trials a section compares
and at which epochs (analysis/footing.py), grids of drawn values (analysis/bins.py), each
checked against a brute-force answer computed from the Parquet files of a run written
through the real RunWriter."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tunefm.analysis import bins, footing
from tunefm.cli import main
from tunefm.run import store
from tunefm.run.writer import RunWriter

MODELS = {"iaro1": 21352, "iaro2": 885470}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def asha_like_run(run_dir, epochs_per_trial: list[int], max_epochs: int = 4, seed: int = 0,
                  space: dict | None = None) -> None:
    """A run whose trials trained `epochs_per_trial` epochs each (fewer than `max_epochs`:
    stopped early), with seeded random accuracies and times, written as a search writes it."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    writer = RunWriter(run_dir, max_epochs=max_epochs, config_keys=["model", "lr", "batch_size"])
    for i, n_epochs in enumerate(epochs_per_trial):
        model = list(MODELS)[i % 2]
        config = {"model": model, "lr": float(10 ** rng.uniform(-4, -1)) if space else [0.01, 0.001][i // 2 % 2],
                  "batch_size": [32, 64, 128][i % 3] if space else 32 * (1 + i // 4)}
        seconds_per_epoch = rng.uniform(0.5, 2.0) * (3 if model == "iaro2" else 1)
        accuracy, elapsed = rng.uniform(0.2, 0.5), 0.0
        for epoch in range(1, n_epochs + 1):
            accuracy = min(0.99, accuracy + rng.uniform(-0.05, 0.15))
            epoch_time = seconds_per_epoch * rng.uniform(0.9, 1.1)
            elapsed += epoch_time
            train_acc = min(0.99, accuracy + rng.uniform(0, 0.2))
            writer.add_epoch(f"t{i:02d}", config, {
                "epoch": epoch, "train_loss": 2 - accuracy, "val_loss": 2.1 - accuracy, "val_acc": round(accuracy, 4),
                "train_acc": train_acc, "epoch_time_s": epoch_time, "train_time_s": epoch_time * 0.9,
                "time_total_s": elapsed, "params": MODELS[model], "gpu_fraction": 0.25})
        writer.set_status(f"t{i:02d}", config, "TERMINATED")
    writer.flush()
    study = {"name": "hand", "searcher": "random" if space else "grid", "space": space or {},
             "grid": {} if space else {"model": list(MODELS), "lr": [0.01, 0.001]}}
    store.write_json({"study": study, "status": "completed"}, run_dir / store.RUN_FILE)


def brute_front(table: pd.DataFrame, metric: str, cost: str) -> set[str]:
    """Trials no other trial of `table` beats: at least as good on both, better on one."""
    value, price = table[metric].to_numpy(), table[cost].to_numpy()
    beaten = ((value[None, :] >= value[:, None]) & (price[None, :] <= price[:, None])
              & ((value[None, :] > value[:, None]) | (price[None, :] < price[:, None]))).any(axis=1)
    return set(table.trial_id[~beaten])


def pareto_json(run_dir, *options: str) -> dict:
    result = invoke("summarize", str(run_dir), "--section", "pareto", "--format", "json", *options)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


COSTS = ["total_time_s", "time_per_epoch_s", "params"]


@pytest.mark.parametrize("cost", COSTS)
def test_the_default_front_compares_the_trials_that_ran_to_the_end(tmp_path, cost):
    asha_like_run(tmp_path / "run", [4] * 8 + [1] * 6 + [2] * 4)
    trials = store.read_trials(tmp_path / "run")
    finished = trials[~trials.stopped_early]
    assert len(finished) == 8 and trials.stopped_early.sum() == 10

    found = pareto_json(tmp_path / "run", "--cost", cost)
    front = pd.DataFrame(found["pareto"])
    assert set(front.trial_id) == brute_front(finished, "best_val_acc", cost)
    assert not front.stopped_early.any() and (front.up_to_epoch == 4).all()
    assert front[cost].is_monotonic_increasing
    (compared,) = found["compared"]
    assert compared["trials"] == 8 and compared["left_out"] == 10 and compared["basis"] == "ran to the end"
    assert compared["left_out_why"] == "10 stopped early by ASHA"
    assert compared["text"] == "the 8 trials that trained all 4 epochs, each up to its last epoch"


@pytest.mark.parametrize("cost", COSTS)
def test_include_stopped_compares_every_trial_at_its_last_epoch_and_marks_the_stopped(tmp_path, cost):
    asha_like_run(tmp_path / "run", [4] * 8 + [1] * 6 + [2] * 4)
    trials = store.read_trials(tmp_path / "run")
    found = pareto_json(tmp_path / "run", "--cost", cost, "--include-stopped")
    front = pd.DataFrame(found["pareto"]).set_index("trial_id")
    assert set(front.index) == brute_front(trials, "best_val_acc", cost)
    assert (front.stopped_early == trials.set_index("trial_id").stopped_early[front.index]).all()
    assert (front.up_to_epoch == front.epochs).all()
    assert found["compared"][0]["basis"] == "all trials" and found["compared"][0]["left_out"] == 0

    text = invoke("summarize", str(tmp_path / "run"), "--section", "pareto", "--cost", cost,
                  "--include-stopped").output
    assert "Compared: all 18 trials, each up to its last epoch (10 stopped early by ASHA, marked *" in " ".join(
        text.split())
    on_front, after = text.split("Stopped early, compared at their last epoch, not on the front (")
    for trial_id, row in front.iterrows():  # each stopped trial on the front carries its mark
        line = next(line for line in on_front.splitlines() if line.startswith(trial_id))
        assert line.endswith(f"{row.epochs}*" if row.stopped_early else f"{row.epochs}")
    stopped = set(trials.trial_id[trials.stopped_early])
    assert set(re.findall(r"^(t\d\d) .*\*$", after, flags=re.M)) == stopped - set(front.index)  # the rest, listed


@pytest.mark.parametrize("cost", COSTS)
def test_too_few_finished_trials_compare_everyone_at_the_highest_epoch_five_reached(tmp_path, cost):
    # 2 ran to the end (4 epochs), 3 stopped after 3, 4 after 2, 6 after 1: five trials reached epoch 3
    asha_like_run(tmp_path / "run", [4, 4, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1])
    epochs = store.read_epochs(tmp_path / "run")
    trials = store.read_trials(tmp_path / "run").set_index("trial_id")
    reached = trials.index[trials.epochs >= 3]
    assert len(reached) == 5
    # the figures up to epoch 3, by brute force from epochs.parquet
    early = epochs[(epochs.epoch <= 3) & epochs.trial_id.isin(reached)].sort_values("epoch")
    expected = pd.DataFrame({
        "best_val_acc": early.groupby("trial_id").val_acc.max(),
        "total_time_s": early.groupby("trial_id").time_total_s.max(),
        "time_per_epoch_s": early.groupby("trial_id").epoch_time_s.mean(),
        "params": trials.params[reached]}).reset_index()

    found = pareto_json(tmp_path / "run", "--cost", cost)
    front = pd.DataFrame(found["pareto"]).set_index("trial_id")
    assert set(front.index) == brute_front(expected, "best_val_acc", cost)
    truth = expected.set_index("trial_id")
    assert np.allclose(front.best_val_acc, truth.best_val_acc[front.index])
    assert np.allclose(front[cost], truth[cost][front.index])
    assert (front.up_to_epoch == 3).all()
    (compared,) = found["compared"]
    assert compared["basis"] == "at epoch" and compared["up_to_epoch"] == 3 and compared["trials"] == 5
    assert compared["left_out"] == 10 and compared["left_out_why"] == "10 reached fewer than 3 epochs"

    text = invoke("summarize", str(tmp_path / "run"), "--section", "pareto", "--cost", cost).output
    assert ("Compared: only 2 of 15 trials trained all 4 epochs, too few to compare: the 5 trials that "
            "reached epoch 3, each up to epoch 3.") in " ".join(text.split())
    if cost == "total_time_s":
        assert "total_time_s counts early stopping as savings" in text


def test_a_run_with_fewer_than_five_trials_compares_all_of_them(tmp_path):
    asha_like_run(tmp_path / "run", [4, 4, 4])
    (compared,) = pareto_json(tmp_path / "run")["compared"]
    assert compared["trials"] == 3 and compared["basis"] == "ran to the end" and compared["left_out"] == 0


def test_at_epoch_recomputes_figures_and_drops_test_figures(tmp_path):
    asha_like_run(tmp_path / "run", [4, 2, 1])
    run = store.load_run(tmp_path / "run")
    trials = run.trials.assign(test_acc=0.5, gpu_seconds=run.trials.total_time_s * 0.25)
    at_two = footing.at_epoch(trials, run.epochs, 2).set_index("trial_id")
    assert list(at_two.index) == ["t00", "t01"] and at_two.test_acc.isna().all()
    first_two = run.epochs[run.epochs.epoch <= 2].groupby("trial_id")
    assert np.allclose(at_two.best_val_acc, first_two.val_acc.max()[at_two.index])
    assert np.allclose(at_two.gpu_seconds, 0.25 * first_two.time_total_s.max()[at_two.index])
    assert (at_two.epochs == [4, 2]).all() and list(at_two.stopped_early) == [False, True]  # their own, kept


def test_the_text_lists_every_stopped_trial_after_the_front(tmp_path):
    asha_like_run(tmp_path / "run", [4] * 8 + [1] * 6 + [2] * 4)
    text = invoke("summarize", str(tmp_path / "run"), "--section", "pareto").output
    heading, rest = text.split("Not compared (10 trials; * = stopped early):")
    heading = " ".join(heading.split())
    assert "Pareto front: val acc (higher is better) vs s/epoch (lower is better)" in heading
    assert "Not compared: 10 stopped early by ASHA (listed after the front); --include-stopped" in heading
    listed = re.findall(r"^(t\d\d) .* (\d)\*$", rest, flags=re.M)
    trials = store.read_trials(tmp_path / "run").set_index("trial_id")
    assert sorted(t for t, _ in listed) == sorted(trials.index[trials.stopped_early])
    assert all(int(n) == trials.epochs[t] for t, n in listed)


def test_every_section_says_what_it_compared(tmp_path):
    asha_like_run(tmp_path / "run", [4] * 8 + [1] * 6 + [2] * 4)
    output = invoke("summarize", str(tmp_path / "run")).output
    scope = "all 18 trials, each at its {}; 10 of 18 stopped early by ASHA (after 1-2 epochs), so their figures " \
            "come from fewer epochs."
    # what follows each heading's underline, up to the next blank line
    said = {heading: " ".join(body.split()) for heading, body in re.findall(r"^(.+)\n=+\n((?:.+\n)+)", output, re.M)}
    for heading, at in [("Best configuration per model (by val acc)", "best epoch"),
                        ("val acc (mean) by lr (rows) x batch_size (columns)", "best epoch"),
                        ("Hyperparameter importance: share of the variation in val acc", "best epoch"),
                        ("Overfitting: gap = final val loss - final train loss", "last epoch")]:
        assert said[heading].startswith("Compared: " + scope.format(at)), heading
    pareto = said["Pareto front: val acc (higher is better) vs s/epoch (lower is better)"]
    assert pareto.startswith("Compared: the 8 trials that trained all 4 epochs, each up to its last epoch.")
    records = json.loads(invoke("summarize", str(tmp_path / "run"), "--format", "json").output)["compared"]
    assert [r["section"] for r in records] == ["best", "grid", "importance", "pareto", "overfit"]
    assert records[0]["text"] == scope.format("best epoch")[:-1] and records[0]["trials"] == 18
    several = invoke("summarize", str(tmp_path / "run"), "--format", "csv", "--section", "best",
                     "--section", "pareto").output
    assert several.split("\n\n")[-1].startswith("# compared\nsection,trials,basis,up_to_epoch,left_out")


# ---- grids of drawn values ----------------------------------------------------------------

RANDOM_SPACE = {"lr": "loguniform(0.0001, 0.1)", "batch_size": "choice([32, 64, 128])"}


def test_a_drawn_lr_is_binned_into_labelled_log_ranges_and_a_choice_stays_exact(tmp_path):
    asha_like_run(tmp_path / "run", [4] * 54, space=RANDOM_SPACE)
    trials = store.read_trials(tmp_path / "run")
    assert trials.lr.nunique() == 54
    found = json.loads(invoke("summarize", str(tmp_path / "run"), "--section", "grid", "--format", "json").output)
    cells = pd.DataFrame(found["grid"])
    labels = ["[0.0001, 0.001)", "[0.001, 0.01)", "[0.01, 0.1]"]  # 27 trials per model / (3 per cell x 3 batches)
    assert set(cells.lr) <= set(labels) and set(cells.batch_size) == {32, 64, 128}
    for cell in cells.itertuples():  # each cell: exactly the trials whose lr lies in its range
        low, high = (float(x) for x in cell.lr.strip("[]()").split(", "))
        inside = trials[(trials.model == cell.model) & (trials.batch_size == cell.batch_size)
                        & (trials.lr >= low) & ((trials.lr < high) | (cell.lr.endswith("]") & (trials.lr <= high)))]
        assert cell.n == len(inside) and math.isclose(cell.best_val_acc, inside.best_val_acc.mean())
    assert cells.n.sum() == 54

    text = invoke("summarize", str(tmp_path / "run"), "--section", "grid").output
    assert "lr in 3 log-spaced ranges of loguniform(0.0001, 0.1)" in " ".join(text.split())
    rows = [line.split()[0] for line in text.splitlines() if line.startswith("[")]
    assert rows == [label.split()[0] for label in labels] * 2  # in order, once per model


def test_bins_are_even_in_log_space_and_few_trials_keep_exact_values():
    trials = pd.DataFrame({"model": ["a"] * 30, "lr": np.geomspace(1e-5, 1e-2, 30), "batch_size": [32, 64] * 15})
    (lr,) = bins.for_grid(trials, {"lr": "loguniform(1e-05, 0.01)"}, ["lr", "batch_size"]).values()
    assert np.allclose(np.log10(lr.edges), np.linspace(-5, -2, len(lr.edges)))  # 30 / (3 x 2) = 5 ranges
    assert lr.labels[0] == "[1e-05, 3.98e-05)" and lr.labels[-1].endswith("0.01]") and len(lr.labels) == 5
    uniform = bins.for_grid(trials.assign(lr=np.linspace(0, 1, 30)), {"lr": "uniform(0, 1)"}, ["lr", "batch_size"])
    assert np.allclose(uniform["lr"].edges, np.linspace(0, 1, 6))
    assert bins.for_grid(trials.head(2), {"lr": "loguniform(1e-05, 0.01)"}, ["lr", "batch_size"]) == {}
    assert bins.for_grid(trials, {"batch_size": "choice([32, 64])"}, ["lr", "batch_size"]) == {}
    assert bins.declared_range("lograndint(1, 100)") == (1.0, 100.0, True)
    assert bins.declared_range("choice([32, 64])") is None


def test_the_report_bins_drawn_keys_and_says_what_each_section_compared(tmp_path):
    from tunefm.analysis import report

    asha_like_run(tmp_path / "run", [4] * 40 + [1] * 14, space=RANDOM_SPACE)
    written = report.write(store.load_run(tmp_path / "run"), tmp_path / "report")
    page = written.index.read_text()
    compared = re.findall(r'<p class="compared">(.*?)</p>', page)
    assert [line.split(";")[0] for line in compared[:3]] == ["Compared: all 54 trials, each at its best epoch"] * 3
    assert any(line.startswith("Compared: all 54 trials, each at its last epoch") for line in compared)  # overfit
    assert "Compared: the 40 trials that trained all 4 epochs, each up to its last epoch." in compared
    assert "Not compared: 14 stopped early by ASHA (listed after the front); --include-stopped" in " ".join(compared)
    for label in ("[0.0001, 0.001)", "[0.001, 0.01)", "[0.01, 0.1]"):  # the grid's rows, in the heatmap and table
        assert page.count(label) >= 2, label


def test_a_cost_few_trials_reach_keeps_the_finished_trials_and_says_why(tmp_path):
    """time_to_90_train_acc_s exists only for trials that reached 90% train accuracy. Here 5
    have one, 1 ran to the end, and at epoch 2 (the last all 5 reached) none had reached
    90% yet: there is no earlier epoch to compare at, so the front stays on the finished trial."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    writer = RunWriter(run_dir, max_epochs=4, config_keys=["model", "lr", "batch_size"])
    for i, n_epochs in enumerate([4, 3, 3, 3, 2, 1]):
        config = {"model": "iaro1", "lr": 0.01 * (i + 1), "batch_size": 32}
        for epoch in range(1, n_epochs + 1):
            train_acc = 0.95 if epoch >= 3 or (epoch == 2 and i == 4) else 0.5  # trial 4 reaches 90% at epoch 2
            writer.add_epoch(f"t{i}", config, {
                "epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5 + i / 100 + epoch / 10,
                "train_acc": train_acc, "epoch_time_s": 1.0, "train_time_s": 0.9, "time_total_s": float(epoch),
                "params": 21352, "gpu_fraction": 0.0})
        writer.set_status(f"t{i}", config, "TERMINATED")
    writer.flush()
    store.write_json({"study": {"name": "hand"}, "status": "completed"}, run_dir / store.RUN_FILE)
    trials = store.read_trials(run_dir).set_index("trial_id")
    assert trials.time_to_90_train_acc_s.notna().sum() == 5 and (~trials.stopped_early).sum() == 1

    found = pareto_json(run_dir, "--cost", "time_to_90_train_acc_s")
    (compared,) = found["compared"]
    assert [r["trial_id"] for r in found["pareto"]] == ["t0"] and compared["basis"] == "ran to the end"
    assert compared["text"] == ("the 1 trial that trained all 4 epochs, each up to its last epoch; fewer than 5 "
                                "trials have a time_to_90_train_acc_s up to epoch 2, the last 5 reached")
    assert compared["left_out_why"] == "4 stopped early by ASHA; 1 no time_to_90_train_acc_s"


def test_a_model_without_trials_in_one_range_gets_a_grid_of_the_ranges_it_has():
    """A binned key is a category listing every range; each model's heatmap shows only the
    ranges its trials fell in, each cell labelled with its own value."""
    import matplotlib.pyplot as plt

    from tunefm.analysis import report

    labels = ["[0.0001, 0.001)", "[0.001, 0.01)", "[0.01, 0.1]"]
    cells = pd.DataFrame({"model": ["iaro1"] * 3 + ["iaro2"] * 2,
                          "lr": pd.Categorical([*labels, labels[0], labels[2]], categories=labels, ordered=True),
                          "batch_size": 32, "best_val_acc": [0.1, 0.2, 0.3, 0.5, 0.7], "n": 1, "stopped": 0})
    fig = report.draw_grid(cells, "best_val_acc", "lr", "batch_size")
    try:
        by_model = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
        iaro2 = by_model["iaro2"]
        assert [t.get_text() for t in iaro2.get_yticklabels()] == [labels[0], labels[2]]
        assert [t.get_text() for t in iaro2.texts] == ["0.5000", "0.7000"]
        assert [t.get_text() for t in by_model["iaro1"].texts] == ["0.1000", "0.2000", "0.3000"]
    finally:
        plt.close(fig)
