"""`tunefm summarize` on a small fourfam run (small_runs.py), checked against the Parquet files directly."""

import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import REPO, tiny_run

from tunefm.analysis import summary
from tunefm.cli import main
from tunefm.engine.data import CLASSES
from tunefm.run import store, writer
from tunefm.run.writer import RunWriter

JSON_KEYS = {"best", "reference", "grid", "importance", "pareto", "overfit", "overfit_grid", "confusion", "confusion_pairs",
             "compared"}


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def summary_json(small_fourfam):
    result = invoke("summarize", str(small_fourfam), "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_json_has_the_documented_keys_and_parses(summary_json):
    assert set(summary_json) == JSON_KEYS
    assert all(isinstance(v, list) and all(isinstance(r, dict) for r in v) for v in summary_json.values())
    readme = (REPO / "README.md").read_text()
    for key in JSON_KEYS:
        assert f"`{key}`" in readme, f"README does not document the JSON key {key}"


def test_best_matches_the_trials_file(small_fourfam, summary_json):
    trials = store.read_trials(small_fourfam)
    best = pd.DataFrame(summary_json["best"]).set_index("model")
    assert sorted(best.index) == ["iaro1", "iaro2", "iaro3", "iaro4"]
    for model, group in trials.groupby("model"):
        top = group.loc[group.best_val_acc.idxmax()]
        row = best.loc[model]
        assert row.best_val_acc == top.best_val_acc and row.n == 1
        assert (row.lr, row.batch_size, row.params) == (top.lr, top.batch_size, top.params)
        assert row.test_acc == top.test_acc  # the best configuration is always among those evaluated
        assert row.min_train_loss == pytest.approx(top.min_train_loss)
        assert row.val_loss_at_best == pytest.approx(top.val_loss_at_best)
        assert row.time_per_epoch_s == pytest.approx(top.time_per_epoch_s)
    assert best.best_val_acc.is_monotonic_decreasing


def test_reference_puts_the_seeds_figures_beside_this_runs(small_fourfam, summary_json):
    """fourfam carries seed 000's results table; each figure sits beside this run's best config's."""
    reference = pd.DataFrame(summary_json["reference"])
    assert len(reference) == 4 * 6  # every model x the 6 figures seed 000 reported
    best = pd.DataFrame(summary_json["best"]).set_index("model")
    acc = reference[reference.figure == "best_val_acc"].set_index("where")
    assert acc.loc["model=iaro1", "seed"] == 0.8941 and acc.loc["model=iaro2", "seed"] == 0.9253
    assert acc.loc["model=iaro1", "seed_chose"] == "lr=0.01 batch_size=32"
    for model, row in best.iterrows():
        assert acc.loc[f"model={model}", "run"] == row.best_val_acc
        assert acc.loc[f"model={model}", "run_chose"] == f"lr={row.lr:g} batch_size={row.batch_size}"
    trials = store.read_trials(small_fourfam).set_index("trial_id")
    times = reference[reference.figure == "time_per_epoch_s"].set_index("where")
    for model, row in best.iterrows():
        assert times.loc[f"model={model}", "run"] == pytest.approx(trials.loc[row.trial_ids, "time_per_epoch_s"])
    text = invoke("summarize", str(small_fourfam), "--section", "reference").output
    assert "Seed reported (000_3b33fd455f65cb7c.txt) | this run" in text
    # Too wide for one 80-column table: one small table per model, the choices above it.
    assert re.search(r"model=iaro1: seed chose lr=0.01 batch_size=32 \(100 epochs\); this run chose "
                     r"lr=\S+ batch_size=\d+ \([123] epochs?\)", " ".join(text.split()))  # wrapped at 80
    assert (reference["seed_epochs"] == 100).all() and (reference["trials"] == 4).all()
    chosen = reference[reference.figure == "best_val_acc"].set_index("where")
    for model, row in best.iterrows():  # how long this run's pick trained (ASHA stops some after 1 epoch)
        assert chosen.loc[f"model={model}", "run_epochs"] == trials.loc[row.trial_ids, "epochs"]
    assert re.search(r"min train loss epoch +100 +[123]$", text, re.MULTILINE)  # epochs print as counts
    assert all(len(line) <= 80 for line in text.splitlines())


def test_reference_leaves_out_what_the_run_does_not_have_and_says_so(small_fourfam, tmp_path):
    """A run of fourfam cut to two models (--set model=iaro1,iaro2) shows the seed's rows for
    those two, and one line naming the rows it has no trials for, not two tables of dashes."""
    cut = shutil.copytree(small_fourfam, tmp_path / "two-models")
    trials = store.read_trials(cut)
    writer.write_trials(cut, trials[trials.model.isin(["iaro1", "iaro2"])])
    text = invoke("summarize", str(cut), "--section", "reference").output
    assert "not in this run: model=iaro3, model=iaro4" in text
    assert "model=iaro1: seed chose" in text and "model=iaro2: seed chose" in text
    assert "model=iaro3:" not in text and "model=iaro4:" not in text
    markdown = invoke("summarize", str(cut), "--section", "reference", "--format", "markdown").output
    assert "is about; - = not evaluated on the test set  \nnot in this run: model=iaro3, model=iaro4  \n" in markdown
    assert "### model=iaro1: seed chose lr=0.01 batch_size=32 (100 epochs); this run chose" in markdown


def test_a_narrow_reference_is_one_table(tmp_path):
    run_dir = tiny_run(tmp_path / "run")
    info = store.read_json(run_dir / store.RUN_FILE)
    info["study"] = {"name": "tiny", "source": "999_x.txt", "reported": [
        {"where": {"lr": 0.01}, "figures": {"best_val_acc": 0.9}, "chosen": {}, "note": "mine"},
        {"where": {"lr": 0.5}, "figures": {"best_val_acc": 0.8}, "chosen": {}, "note": ""}]}
    store.write_json(info, run_dir / store.RUN_FILE)
    text = summary.render(store.load_run(run_dir), summary.SummaryOptions(sections=("reference",)))
    assert text.splitlines()[-4:] == [
        "not in this run: lr=0.5",
        "",
        "where    figure   seed reported  this run  seed epochs  run epochs  note",
        "lr=0.01  val acc         0.9000    0.7000            -           2  mine"]


def test_grid_matches_a_pivot_of_the_trials_file(small_fourfam, summary_json):
    trials = store.read_trials(small_fourfam)
    expected = trials.pivot_table(index=["model", "lr"], columns="batch_size", values="best_val_acc")
    cells = pd.DataFrame(summary_json["grid"])
    assert len(cells) == len(trials) == 16 and (cells.n == 1).all()
    for cell in cells.itertuples():
        assert cell.best_val_acc == pytest.approx(expected.loc[(cell.model, cell.lr), cell.batch_size])
    stopped = trials.set_index(["model", "lr", "batch_size"]).stopped_early
    assert all(cell.stopped == int(stopped[(cell.model, cell.lr, cell.batch_size)]) for cell in cells.itertuples())


@pytest.mark.parametrize("cost", ["total_time_s", "time_per_epoch_s", "params", "gpu_seconds"])
def test_pareto_matches_the_definition_on_the_trials_file(small_fourfam, cost):
    trials = store.read_trials(small_fourfam)
    trials["gpu_seconds"] = trials.total_time_s * trials.gpu_fraction
    assert trials.stopped_early.any() and (~trials.stopped_early).sum() >= 5  # else the test means less
    trials = trials[(trials.status == "TERMINATED") & ~trials.stopped_early]  # by default: those that ran to the end
    acc, price = trials.best_val_acc.to_numpy(), trials[cost].to_numpy()
    beaten = ((acc[None, :] >= acc[:, None]) & (price[None, :] <= price[:, None])
              & ((acc[None, :] > acc[:, None]) | (price[None, :] < price[:, None]))).any(axis=1)
    expected = set(trials.trial_id[~beaten])
    result = invoke("summarize", str(small_fourfam), "--section", "pareto", "--cost", cost, "--format", "json")
    front = pd.DataFrame(json.loads(result.output)["pareto"])
    assert set(front.trial_id) == expected
    assert front[cost].is_monotonic_increasing
    assert front.best_val_acc.iloc[-1] == trials.best_val_acc.max()


def test_overfit_gaps_match_the_epochs_file(small_fourfam, summary_json):
    epochs = store.read_epochs(small_fourfam).sort_values(["trial_id", "epoch"])
    last = epochs.groupby("trial_id").last()
    gaps = pd.DataFrame(summary_json["overfit"]).set_index("trial_id")
    assert len(gaps) == len(last) == 16
    assert np.allclose(gaps.gap, (last.val_loss - last.train_loss)[gaps.index])
    assert (gaps.epochs == last.epoch[gaps.index]).all()
    lowest = epochs.loc[epochs.groupby("trial_id").val_loss.idxmin()].set_index("trial_id")
    assert (gaps.min_val_loss_epoch == lowest.epoch[gaps.index]).all()
    assert (gaps.epochs_past_min == gaps.epochs - gaps.min_val_loss_epoch).all()
    rise = last.val_loss / lowest.val_loss - 1
    fell = last.train_loss < lowest.train_loss
    assert (gaps.overfitting == ((rise >= 0.10) & fell)[gaps.index]).all()

    by_grid = pd.DataFrame(summary_json["overfit_grid"]).set_index(["lr", "batch_size"])
    expected = gaps.groupby(["lr", "batch_size"]).gap.mean()
    assert len(by_grid) == 4 and np.allclose(by_grid.mean_gap, expected[by_grid.index])
    assert (by_grid.n == 4).all()


def test_confusion_matches_the_confusion_file(small_fourfam, summary_json):
    counts = pd.read_parquet(small_fourfam / store.CONFUSION_FILE)
    trials = store.read_trials(small_fourfam)
    chosen = trials.loc[trials.test_acc.notna()].sort_values(["best_val_acc", "trial_id"],
                                                             ascending=[False, True]).trial_id.iloc[0]
    rows = pd.DataFrame(summary_json["confusion"])
    assert (rows.trial_id == chosen).all() and rows["class"].tolist() == list(CLASSES)
    matrix = counts[counts.trial_id == chosen].pivot(index="true_label", columns="pred_label", values="count")
    assert (rows[list(CLASSES)].to_numpy() == matrix.to_numpy()).all()
    assert np.allclose(rows.recall, np.diag(matrix) / matrix.sum(axis=1))
    assert np.allclose(rows.precision, np.diag(matrix) / matrix.sum(axis=0), equal_nan=True)  # NaN: never predicted
    pairs = pd.DataFrame(summary_json["confusion_pairs"])
    off = matrix.to_numpy().copy()
    np.fill_diagonal(off, 0)
    assert pairs["count"].iloc[0] == off.max() and pairs["count"].is_monotonic_decreasing


def test_table_output_fits_80_columns_and_shows_every_section(small_fourfam):
    result = invoke("summarize", str(small_fourfam))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80][:3]
    for heading in ("Best configuration per model", "val acc (mean) by lr (rows) x batch_size (columns)",
                    "Pareto front", "Overfitting", "Mean gap by lr x batch_size", "Confusion matrix of trial",
                    "Per class:", "Most confused:"):
        assert heading in result.output
    assert "iaro1:" in result.output and "* = stopped early by ASHA" in result.output


def test_markdown_and_csv(small_fourfam):
    markdown = invoke("summarize", str(small_fourfam), "--format", "markdown", "--section", "best").output
    assert "## Best configuration per model (by val acc)" in markdown
    assert "| model | params | val acc | test acc | lr | batch |" in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| iaro")]) == 4

    one = invoke("summarize", str(small_fourfam), "--format", "csv", "--section", "pareto").output
    front = pd.read_csv(io.StringIO(one))
    assert list(front.columns) == ["trial_id", "model", "lr", "batch_size", "best_val_acc", "time_per_epoch_s",
                                   "epochs", "stopped_early", "stopped_at_rung", "up_to_epoch"]
    assert not front.stopped_early.any()
    several = invoke("summarize", str(small_fourfam), "--format", "csv", "--section", "best", "--section", "overfit")
    blocks = several.output.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["# best", "# overfit", "# overfit_grid", "# compared"]
    assert len(pd.read_csv(io.StringIO(blocks[1]), comment="#")) == 16


def test_grid_options_choose_other_axes_and_aggregates(small_fourfam):
    result = invoke("summarize", str(small_fourfam), "--section", "grid", "--rows", "model", "--cols", "lr",
                    "--agg", "max", "--metric", "val_loss_at_best", "--format", "json")
    cells = pd.DataFrame(json.loads(result.output)["grid"])
    trials = store.read_trials(small_fourfam)
    expected = trials.groupby(["model", "lr"]).val_loss_at_best.max()
    assert len(cells) == 8 and (cells.n == 2).all()
    assert np.allclose(cells.set_index(["model", "lr"]).val_loss_at_best, expected)


def test_summarize_imports_neither_ray_nor_torch(small_fourfam):
    code = ("import sys; from tunefm.cli import main\n"
            f"main(['summarize', {str(small_fourfam)!r}, '--format', 'json'], standalone_mode=False)\n"
            "heavy = sorted(m for m in ('ray', 'torch') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["best"]


# ---- runs by name, the newest run, and errors ------------------------------------------------

def test_default_run_is_the_newest_and_a_name_is_looked_up_under_results(tmp_path):
    results = tmp_path / "results"
    tiny_run(results / "old", "2026-01-01T00:00:00+00:00")
    tiny_run(results / "new", "2026-02-01T00:00:00+00:00")
    (results / "benchmarks").mkdir()  # not a run
    assert invoke("summarize", "--results", str(results)).output.startswith(f"Run {results / 'new'}\n")
    assert invoke("summarize", "old", "--results", str(results)).output.startswith(f"Run {results / 'old'}\n")


def test_a_run_in_progress_without_test_results_still_summarizes(tmp_path):
    run_dir = tiny_run(tmp_path / "live", finished=False)
    result = invoke("summarize", str(run_dir))
    assert result.exit_code == 0
    assert "no trial has a test-set evaluation yet; run `tunefm evaluate RUN`" in result.output
    assert json.loads(invoke("summarize", str(run_dir), "--format", "json").output)["confusion"] == []


@pytest.mark.parametrize("setup, args, message", [
    (lambda r: None, ["summarize", "nope"], "Error: run 'nope' does not exist; runs under {results}/: run"),
    (lambda r: (r.parent.parent / "plain").mkdir(), ["summarize", "{tmp}/plain"],
     "Error: run '{tmp}/plain' is not a run folder (no run.json or trials.parquet); runs under {results}/: run"),
    (lambda r: None, ["summarize", "--results", "{tmp}/empty"], "Error: no runs under {tmp}/empty/; start one "
                                                               "with `tunefm search`, or give a run folder"),
    (lambda r: shutil.rmtree(r / store.TRIALS_FILE), ["summarize", "run"],
     "Error: run {results}/run has no results yet (trials.parquet is missing); a search writes it after its "
     "first epochs"),
    (lambda r: (r / store.TRIALS_FILE / "bucket-00000.parquet").write_bytes(b"PAR1 not really"), ["summarize", "run"],
     "Error: cannot read {results}/run/trials.parquet/bucket-00000.parquet: "),
    (lambda r: writer.write_trials(r, pd.DataFrame({"trial_id": pd.Series([], dtype=str)})), ["summarize", "run"],
     "Error: run {results}/run has no trials in trials.parquet"),
    (lambda r: None, ["summarize", "run", "--rows", "width"],
     "Error: --rows 'width' is not a config key of this run; valid: model, lr, batch_size"),
    (lambda r: None, ["summarize", "run", "--section", "confusion"],
     "Error: no trial of this run has a test-set evaluation; run `tunefm evaluate RUN` first"),
    (lambda r: None, ["summarize", "run", "--metric", "nope"], "Error: --metric 'nope' is not a numeric column"),
    (lambda r: None, ["report", "nope"], "Error: run 'nope' does not exist"),
    (lambda r: next((r / store.EPOCHS_FILE).glob("*.parquet")).write_text("garbage"), ["report", "run"],
     "Error: cannot read {results}/run/epochs.parquet/part-"),
    (lambda r: None, ["evaluate", "nope"], "Error: run 'nope' does not exist"),
])
def test_bad_runs_and_options_are_one_error_line(tmp_path, setup, args, message):
    results = tmp_path / "results"
    run_dir = tiny_run(results / "run")
    setup(run_dir)
    changed = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    if args[0] in ("summarize", "report", "evaluate") and "--results" not in args:
        args = [*args, "--results", str(results)]
    args = [a.format(tmp=tmp_path, results=results) for a in args]
    result = invoke(*args)
    expected = message.format(tmp=tmp_path, results=results)
    assert result.exit_code == 1
    assert result.output.startswith(expected) and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == changed  # nothing written


def test_repeated_seeds_show_mean_std_and_n_within_80_columns(tmp_path):
    writer = RunWriter(tmp_path, max_epochs=2, config_keys=["model", "lr", "batch_size", "seed"])
    for lr, seed in [(0.01, 0), (0.01, 1), (0.01, 2), (0.1, 0), (0.1, 1), (0.1, 2)]:
        config = {"model": "iaro1", "lr": lr, "batch_size": 8, "seed": seed}
        for epoch in (1, 2):
            val_acc = 0.5 + lr + 0.01 * seed + 0.1 * epoch
            writer.add_epoch(f"{lr}-{seed}", config, {
                "epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.1 / epoch, "val_acc": val_acc,
                "train_acc": 0.5, "epoch_time_s": 1.0 + seed, "train_time_s": 0.9, "time_total_s": 2.0 * epoch,
                "params": 21352, "gpu_fraction": 0.0})
        writer.set_status(f"{lr}-{seed}", config, "TERMINATED")
    writer.flush()
    run = store.load_run(tmp_path)
    text = summary.render(run, summary.SummaryOptions(sections=("best", "grid")), "table")
    assert max(len(line) for line in text.splitlines()) <= 80
    row = next(line for line in text.splitlines() if line.startswith("iaro1"))
    mean, std = np.mean([0.80, 0.81, 0.82]), np.std([0.80, 0.81, 0.82], ddof=1)
    assert f"{mean:.4f}±{std:.4f}" in row and "  3  " in row and "0.1" in row
    assert "mean±std over seeds; n = seeds" in text
    best = json.loads(summary.render(run, summary.SummaryOptions(sections=("best",)), "json"))["best"][0]
    assert best["n"] == 3 and best["time_per_epoch_s"] == 2.0 and best["trial_ids"] == "0.1-0,0.1-1,0.1-2"
