"""`tunefm report`: every figure, labelled, named by index.html; failures keep the old report."""

import re
import struct

import matplotlib.pyplot as plt
import pytest
from click.testing import CliRunner
from conftest import linked_copy, tiny_run

from tunefm.analysis import queries, report, summary
from tunefm.cli import main
from tunefm.errors import UserError
from tunefm.run import store

FIGURES = ["curves.png", "grid.png", "pareto.png", "overfit.png", "confusion.png", "f1.png"]


def png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_report_writes_every_figure_and_index_names_only_existing_files(small_fourfam, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(small_fourfam), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output == f"Wrote 6 figures and {out / 'index.html'}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURES, "index.html"])
    for name in FIGURES:
        width, height = png_size(out / name)
        assert width >= 600 and height >= 350, name  # big enough to read
    page = (out / "index.html").read_text()
    named = [n for links in re.findall(r'<p class="png">PNG: (.*?)</p>', page)
             for n in re.findall(r'<a href="([^"]+)"', links)]
    assert sorted(named) == sorted(FIGURES) and all((out / n).is_file() for n in named)
    assert page.count('class="plotly-graph-div"') == 7  # the interactive figures (test_report_browser.py)
    for table_text in ("Best configuration per model", "iaro4", "Pareto front", "Most confused", "Shirt",
                       "Seed reported (000_3b33fd455f65cb7c.txt) | this run", "lr=0.005 batch_size=8",
                       "Hyperparameter importance", "lr x batch_size", "analysis of variance", "run epochs"):
        assert table_text in page
    assert "not in this run" not in page  # small_fourfam has every model the seed reported


def every_axes_is_labelled(fig):
    title = fig._suptitle.get_text() if fig._suptitle else ""
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel() or ax.get_xlabel(), "a colour bar without a label"
            continue
        assert ax.get_title() or title, "an axes without a title"
        assert ax.get_xlabel() and ax.get_ylabel(), f"axes {ax.get_title()!r} lacks an axis label"


def draw_default_pareto(run: store.RunTables, cost: str):
    front, basis = summary.pareto_front(run, summary.SummaryOptions(cost=cost))
    return report.draw_pareto(basis.compared, front, basis.left_out, cost=cost, compared_text=basis.text)


def test_every_figure_has_a_title_axis_labels_and_units(small_fourfam):
    run = store.load_run(small_fourfam)
    result = queries.confusion(run.confusion, run.trials)
    gaps = queries.overfit(run.trials, run.epochs)
    figures = [report.draw_curves(queries.best(run.trials), run.trials, run.epochs),
               report.draw_grid(queries.grid(run.trials)), report.draw_overfit(queries.overfit_grid(gaps)),
               report.draw_confusion(result), report.draw_f1(result),
               *(draw_default_pareto(run, cost) for cost in queries.COSTS)]
    for fig in figures:
        every_axes_is_labelled(fig)
        labels = " ".join(ax.get_xlabel() + " " + ax.get_ylabel() for ax in fig.axes)
        assert "(" in labels, "units are given in parentheses"
        plt.close(fig)


def test_color_by_must_be_a_config_key_of_the_run(small_fourfam, tmp_path):
    result = CliRunner().invoke(main, ["report", str(small_fourfam), "--out", str(tmp_path / "r"), "--color-by", "x"])
    assert result.exit_code == 1 and result.output.startswith("Error: --color-by 'x' is not a config key of this "
                                                              "run; valid: model, lr, batch_size")
    assert not (tmp_path / "r").exists()


def test_report_without_test_results_leaves_out_the_confusion_figures(tmp_path):
    run_dir = tiny_run(tmp_path / "run")
    written = report.write(store.load_run(run_dir))
    assert written.index == run_dir / "report" / "index.html"
    assert sorted(p.name for p in written.figures) == sorted(["curves.png", "grid.png", "pareto.png", "overfit.png"])
    assert "no trial has a test-set evaluation yet" in written.index.read_text()


def test_a_failed_report_keeps_the_previous_one(small_fourfam, tmp_path):
    run_dir = linked_copy(small_fourfam, tmp_path / "copy")
    first = report.write(store.load_run(run_dir))
    before = {p.name: p.read_bytes() for p in first.index.parent.iterdir()}
    run = store.load_run(run_dir)
    run.trials["best_val_acc"] = float("nan")  # nothing left to plot
    with pytest.raises(UserError, match="has no trial with a result yet; nothing to plot"):
        report.write(run)
    assert {p.name: p.read_bytes() for p in first.index.parent.iterdir()} == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".report")]  # no temporary folders left


def test_the_loss_axis_names_the_loss_each_trial_trained_with(small_fourfam):
    """output=sigmoid trials train on binary cross-entropy: their curves must not say cross-entropy."""
    run = store.load_run(small_fourfam)
    best = queries.best(run.trials)
    softmax = report.draw_curves(best, run.trials, run.epochs)
    assert {ax.get_ylabel() for ax in softmax.axes if ax.get_visible()} == {"cross-entropy (nats)"}
    sigmoid_trials = run.trials.assign(output="sigmoid")
    sigmoid = report.draw_curves(best, sigmoid_trials, run.epochs)
    assert {ax.get_ylabel() for ax in sigmoid.axes if ax.get_visible()} == {
        "binary cross-entropy (mean over the 10 sigmoid outputs) (nats)"}
    assert report.loss_name(["softmax", "sigmoid"]) == "cross-entropy or binary cross-entropy, by each trial's output"
    gaps = queries.overfit_grid(queries.overfit(sigmoid_trials, run.epochs))
    overfit = report.draw_overfit(gaps, loss=report.loss_name(sigmoid_trials.output))
    assert "binary cross-entropy" in overfit.axes[-1].get_ylabel()
    for fig in (softmax, sigmoid, overfit):
        plt.close(fig)
