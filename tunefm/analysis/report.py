"""`tunefm report`: one self-contained, interactive index.html and PNG figures, for one run.

    written = report.write(store.load_run(run_dir), out_dir=None, color_by="lr")   # <run>/report/
    written.figures, written.index

index.html holds the interactive figures (interactive.py: plotly, with plotly.js embedded
once, so the file works offline and can be mailed), the summary tables, and links to the
PNGs. The PNGs (matplotlib, Agg backend; every one has a title, axis labels and units) are
for papers and notebooks:

    curves.png     train and val loss per epoch of each model's best trial
    grid.png       val acc over lr x batch size, one heatmap per model
    pareto.png     val acc against cost, the front highlighted; trials it does not compare grey
    overfit.png    mean overfitting gap over lr x batch size, all models pooled
    confusion.png  test-set confusion matrix of the best evaluated trial
    f1.png         its per-class F1 scores

The folder is built under a temporary name and swapped in at the end, so a failed
report leaves an earlier one as it was. Reads Parquet only; no Ray, no torch.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import fill

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in threads and on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tunefm.analysis import bins, footing, importance, interactive, queries, summary  # noqa: E402
from tunefm.engine.data import CLASSES  # noqa: E402
from tunefm.errors import UserError  # noqa: E402
from tunefm.run import store  # noqa: E402
from tunefm.run.trial_summary import config_columns  # noqa: E402

DPI = 110
COST_LABELS = {"total_time_s": "training time per trial (s)", "time_per_epoch_s": "time per epoch (s)",
               "params": "parameters (count)", "gpu_seconds": "GPU time per trial (GPU-seconds)",
               "time_to_90_train_acc_s": "time to 90% train accuracy (s)"}
ACC_LABEL = "best validation accuracy (fraction correct)"


@dataclass
class Written:
    index: Path
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # figures left out, and why


def _axis_values(values) -> list[str]:
    return [summary.fmt_value(v) for v in values]


def _grid_shape(n: int, columns: int = 2) -> tuple[int, int]:
    cols = min(n, columns)
    return math.ceil(n / cols), cols


LOSS_NAMES = {"softmax": "cross-entropy", "sigmoid": "binary cross-entropy (mean over the 10 sigmoid outputs)"}


def loss_name(outputs) -> str:
    """What the loss is for trials with these `output` values (softmax where a trial has none)."""
    kinds = {"softmax" if pd.isna(o) else o for o in outputs} or {"softmax"}
    if len(kinds) == 1:
        return LOSS_NAMES.get(kinds.pop(), "loss")
    return "cross-entropy or binary cross-entropy, by each trial's output"


def _outputs(trials: pd.DataFrame, trial_ids=None) -> list:
    if "output" not in trials.columns:
        return ["softmax"]
    chosen = trials if trial_ids is None else trials[trials["trial_id"].isin(list(trial_ids))]
    return chosen["output"].tolist()


def draw_curves(best: pd.DataFrame, trials: pd.DataFrame, epochs: pd.DataFrame) -> Figure:
    """Loss per epoch of each model's best trial (`best` is `queries.best(trials)`)."""
    ids = [tid.split(",")[0] for tid in best["trial_ids"]]  # first seed of the best configuration
    rows, cols = _grid_shape(len(ids))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.8 * rows), squeeze=False)
    for ax, (_, model_best), trial_id in zip(axes.flat, best.iterrows(), ids):
        history = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        ax.plot(history["epoch"], history["train_loss"], "o-", label="train loss")
        ax.plot(history["epoch"], history["val_loss"], "s-", label="val loss")
        best_epoch = trials.loc[trials["trial_id"] == trial_id, "best_epoch"].iloc[0]
        if not pd.isna(best_epoch):
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best val acc (epoch {best_epoch})")
        ax.set_title(f"{model_best['model']}: lr {summary.fmt_value(model_best.get('lr'))}, "
                     f"batch {summary.fmt_value(model_best.get('batch_size'))} (trial {trial_id})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{loss_name(_outputs(trials, [trial_id]))} (nats)", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(ids):]:
        ax.set_visible(False)
    fig.suptitle("Loss curves of each model's best trial")
    fig.tight_layout()
    return fig


def _heatmap(ax, values: pd.DataFrame, vmin: float, vmax: float, cmap: str, labels: pd.DataFrame | None = None):
    """An annotated heatmap; each label is drawn in black or white, whichever reads on its cell."""
    colours = plt.get_cmap(cmap)
    image = ax.imshow(values.to_numpy(dtype=float), cmap=colours, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(values.shape[1]), _axis_values(values.columns))
    ax.set_yticks(range(values.shape[0]), _axis_values(values.index))
    for (i, j), value in np.ndenumerate(values.to_numpy(dtype=float)):
        if np.isnan(value):
            continue
        r, g, b, _ = colours(image.norm(value))
        text = labels.iat[i, j] if labels is not None else f"{value:.3f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    return image


def _axis_label(key: str) -> str:
    return {"lr": "learning rate", "batch_size": "batch size (images)"}.get(key, key)


def draw_grid(cells: pd.DataFrame, metric: str = "best_val_acc", rows: str = "lr",
              cols: str = "batch_size", rule: str = "ASHA") -> Figure:
    """One heatmap per model of `queries.grid` cells (`rule`: what stopped trials early)."""
    labels = summary.grid_displays(cells, metric, rows, cols)
    models = list(labels)
    n_rows, n_cols = _grid_shape(len(models))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(6.2 * n_cols, 3.4 * n_rows + 0.6), squeeze=False,
                             layout="constrained")
    vmin, vmax = cells[metric].min(), cells[metric].max()
    image = None
    for ax, model in zip(axes.flat, models):
        values = queries.pivot(cells, None if model == "all" else model, rows, cols, metric)
        image = _heatmap(ax, values, vmin, vmax, "viridis", labels[model])
        ax.set_title(model)
        ax.set_xlabel(_axis_label(cols))
        ax.set_ylabel(_axis_label(rows))
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    stopped = f"; * every trial in the cell stopped early by {rule}" if (cells["stopped"] > 0).any() else ""
    fig.suptitle(f"Validation accuracy over {rows} x {cols} (mean over seeds){stopped}")
    fig.colorbar(image, ax=axes.ravel().tolist(), label=ACC_LABEL, shrink=0.9)
    return fig


def draw_pareto(compared: pd.DataFrame, front: pd.DataFrame, left_out: pd.DataFrame | None = None,
                metric: str = "best_val_acc", cost: str = "time_per_epoch_s", compared_text: str = "") -> Figure:
    """The compared trials against their cost, `front` (`queries.pareto` of them) highlighted,
    and the trials left out (`footing.Basis.left_out`: stopped early, ...) grey, off the front,
    one marker per number of epochs they trained. `compared` must carry `cost` (queries.with_cost)."""
    left_out = left_out if left_out is not None else compared.iloc[0:0]
    fig, ax = plt.subplots(figsize=(8, 5.4))
    marks = ["x", "+", "1", "2", "3", "4"]
    grey = left_out[left_out[metric].notna() & left_out[cost].notna()] if len(left_out) else left_out
    for i, ((why, epochs), group) in enumerate(grey.groupby(["why", "epochs"], sort=True) if len(grey) else []):
        ax.scatter(group[cost], group[metric], s=22, color="#9aa5b1", marker=marks[i % len(marks)],
                   label=f"not compared, {why}: {len(group)} after {summary.fmt_count(epochs)} epoch(s)")
    scored = compared[compared[metric].notna() & compared[cost].notna()]
    for model, group in scored.groupby("model", sort=True):
        ax.scatter(group[cost], group[metric], s=18, alpha=0.7, label=model)
    ax.step(front[cost], front[metric], where="post", color="black", linewidth=1)
    ax.scatter(front[cost], front[metric], s=60, facecolors="none", edgecolors="black", linewidths=1.5,
               label=f"Pareto front ({len(front)} trials)")
    every = pd.concat([scored[cost], grey[cost]]) if len(grey) else scored[cost]
    positive = every[every > 0]
    log_scale = bool(len(positive)) and positive.max() / positive.min() > 20
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel(COST_LABELS[cost] + (", log scale" if log_scale else ""))
    ax.set_ylabel(ACC_LABEL)
    title = "Accuracy vs cost: front = no compared trial is both better and cheaper"
    ax.set_title(title + ("\n" + fill(f"Compared: {compared_text}", 95) if compared_text else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw_overfit(gap_cells: pd.DataFrame, rows: str = "lr", cols: str = "batch_size",
                 loss: str = LOSS_NAMES["softmax"]) -> Figure:
    """The mean gap of `queries.overfit_grid` cells as a diverging heatmap; `loss` names the loss."""
    table = gap_cells.pivot(index=rows, columns=cols, values="mean_gap")
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    limit = np.nanmax(np.abs(table.to_numpy(dtype=float))) or 1.0
    image = _heatmap(ax, table, -limit, limit, "coolwarm", table.map(summary.fmt_gap))
    fig.colorbar(image, ax=ax, label=f"val loss - train loss (nats)\n{loss}")
    ax.set_xlabel(_axis_label(cols))
    ax.set_ylabel(_axis_label(rows))
    ax.set_title("Mean overfitting gap at each trial's last epoch, all models")
    return fig


def draw_confusion(result: queries.Confusion) -> Figure:
    counts = result.matrix.to_numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Test-set confusion, trial {result.trial_id} (accuracy {result.accuracy:.4f}; "
                 f"counts, colour = share of true class)", fontsize=10)
    fig.colorbar(image, ax=ax, label="share of the true class (0-1)", shrink=0.8)
    fig.tight_layout()
    return fig


def draw_f1(result: queries.Confusion) -> Figure:
    scores = result.per_class
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = ax.barh(scores["class"], scores["f1"], color="tab:blue")
    ax.bar_label(bars, labels=[summary.fmt_acc(v) for v in scores["f1"]], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("F1 score on the test set (0-1)")
    ax.set_ylabel("class")
    ax.set_title(f"Per-class F1, trial {result.trial_id}")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _table_html(frame: pd.DataFrame, index: bool) -> str:
    return frame.to_html(index=index, escape=True, border=0, classes="table", na_rep="-")


PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


def plot_html(fig) -> str:
    """A plotly figure as a div for index.html, which carries plotly.js once in its head."""
    return fig.to_html(full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG)


def index_html(run: store.RunTables, written: Written, sections: list[tuple[str, list[str], list[str]]]) -> str:
    """The page: run header, then per section its interactive figures and tables (already
    HTML) and links to its PNGs; plotly.js inline, so nothing is fetched."""
    body = [f"<h1>tunefm report: {html.escape(run.run_dir.name)}</h1>",
            "<p>" + "<br>".join(html.escape(line) for line in summary.run_header(run)) + "</p>"]
    for title, figures, blocks in sections:
        body.append(f"<h2>{html.escape(title)}</h2>")
        body += blocks
        if figures:
            body.append('<p class="png">PNG: ' + ", ".join(f'<a href="{html.escape(name)}">{html.escape(name)}</a>'
                                                           for name in figures) + "</p>")
    if written.notes:
        body.append("<h2>Left out</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in written.notes) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "img{max-width:100%}.table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1.5em}"
             ".table td,.table th{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd}"
             ".png{font-size:0.85em;color:#555}")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>tunefm report: {html.escape(run.run_dir.name)}</title><style>{style}</style>"
            f"<script>{interactive.plotly_js()}</script></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(run: store.RunTables, out_dir: str | os.PathLike | None = None, cost: str | None = None,
          color_by: str = "lr", include_stopped: bool = False) -> Written:
    """Write every figure the run's data allows, and index.html; return what was written.
    `cost`: the Pareto plot's (default: `summary.default_cost`); `color_by`: the config key
    that colours the interactive learning curves."""
    cost = cost or summary.default_cost(run)
    out = Path(out_dir).expanduser() if out_dir else run.run_dir / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    queries.with_cost(run.trials, cost)  # validate before drawing anything
    keys = config_columns(run.trials)
    if color_by not in keys:
        raise UserError(f"--color-by {color_by!r} is not a config key of this run; valid: {', '.join(keys)}")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot write the report to {out}: {e.strerror or e}") from None
    try:
        written, sections = _draw(run, tmp, cost, color_by, include_stopped)
        (tmp / "index.html").write_text(index_html(run, written, sections))
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    written.index = out / "index.html"
    written.figures = [out / p.name for p in written.figures]
    return written


def _draw(run: store.RunTables, folder: Path, cost: str, color_by: str = "lr",
          include_stopped: bool = False) -> tuple[Written, list]:
    """Each analysis once, drawn as an interactive figure and a PNG, and shown as a table."""
    trials, epochs, metric = run.trials, run.epochs, "best_val_acc"
    rule = footing.stopping_rule(run.info)  # ASHA, or MO-ASHA on several objectives
    if trials[metric].isna().all():
        raise UserError(f"run {run.run_dir} has no trial with a result yet; nothing to plot")
    written, sections = Written(folder / "index.html"), []

    def compared(section: str) -> str:
        """Which trials a section includes and at which epochs (as `tunefm summarize` says it)."""
        text = footing.scope_text(trials, summary.READ_AT[section], rule)
        return f'<p class="compared">Compared: {html.escape(text)}.</p>'

    def figure(name: str, fig: Figure) -> list[str]:
        try:
            fig.savefig(folder / name, dpi=DPI)
        finally:
            plt.close(fig)
        written.figures.append(folder / name)
        return [name]

    best = queries.best(trials, metric)
    sections.append(("Best configuration per model", [],
                     [compared("best"), _table_html(summary.best_display(best, metric), False)]))
    reference = queries.reported_vs_run(trials, run.info.get("study", {}).get("reported", []))
    if len(reference):
        source = run.info["study"].get("source") or "the source seed"
        note = "".join(f"<p>{html.escape(line)}</p>" for line in summary.reference_note(reference).splitlines())
        present = summary.rows_in_run(reference)
        sections.append((f"Seed reported ({source}) | this run", [],
                         [note, *([_table_html(summary.reference_display(present), False)] if len(present) else [])]))
    loss = loss_name(_outputs(trials, None))
    sections.append(("Learning curves", figure("curves.png", draw_curves(best, trials, epochs)),
                     [plot_html(interactive.learning_curves(trials, epochs, color_by, loss, rule))]))
    sections.append(("Parallel coordinates", [], [plot_html(interactive.parallel_coordinates(trials, metric))]))
    rows, cols = summary.grid_axes(run)
    binnings = summary.grid_binnings(run, summary.SummaryOptions(rows=rows, cols=cols))
    binned = bins.apply(trials, binnings)  # drawn keys (random, TPE studies) in a few ranges
    cells = queries.grid(binned, metric, rows, cols)
    grid_tables = [f"<h3>{html.escape(model)}</h3>" + _table_html(table, True)
                   for model, table in summary.grid_displays(cells, metric, rows, cols).items()]
    heatmaps = interactive.grid_heatmaps(binned, metric, rows, cols)
    sections.append((f"Validation accuracy over {rows} x {cols}",
                     figure("grid.png", draw_grid(cells, metric, rows, cols, rule)),
                     [compared("grid"), *([plot_html(heatmaps)] if heatmaps is not None else []), *grid_tables]))
    try:
        result = importance.importance(trials, metric)
        notes = "<p>" + html.escape("; ".join(result.notes())) + "</p>"
        sections.append(("Hyperparameter importance", [], [
            compared("importance"), plot_html(interactive.importance_bars(result.table, result.description, metric)), notes,
            _table_html(summary.importance_display(importance.records(result)), False)]))
    except UserError as e:  # too few trials, or nothing varied
        written.notes.append(f"hyperparameter importance: {e}")
    options = summary.SummaryOptions(metric=metric, cost=cost, include_stopped=include_stopped)
    front, basis = summary.pareto_front(run, options)
    front = summary.with_basis(front, basis, metric, rule)
    title, listed = front.attrs["listed"]
    note = "".join(f'<p class="compared">{html.escape(line)}</p>' for line in summary.pareto_note(
        front, metric, cost, int(trials[metric].notna().sum())).splitlines())
    sections.append((summary.pareto_heading(metric, cost),
                     figure("pareto.png", draw_pareto(basis.compared, front, basis.left_out, metric, cost, basis.text)),
                     [note, plot_html(interactive.pareto(basis.compared, front, basis.left_out, metric, cost,
                                                         COST_LABELS.get(cost, cost), rule)),
                      _table_html(summary.pareto_display(front, metric, cost), False),
                      *([f"<details><summary>{html.escape(title)}</summary>"
                         + _table_html(summary.pareto_display(listed, metric, cost), False) + "</details>"]
                        if len(listed) else [])]))
    timeline = interactive.timeline(trials, epochs)
    if timeline is not None:
        sections.append(("Timeline", [], [plot_html(timeline)]))
    else:
        written.notes.append("timeline: no trial records when it started (a run from an older tunefm)")
    gaps = queries.overfit(trials, epochs)
    overfit_table = ("<details><summary>Every trial</summary>" + _table_html(summary.overfit_display(gaps), False)
                     + "</details>")
    gap_cells = queries.overfit_grid(bins.apply(gaps, binnings), rows, cols)
    loss = loss_name(_outputs(trials, gaps["trial_id"] if "trial_id" in gaps else None))
    sections.append(("Overfitting", figure("overfit.png", draw_overfit(gap_cells, rows, cols, loss=loss)),
                     [compared("overfit"), overfit_table]))
    if run.confusion.empty:
        written.notes.append("confusion.png and f1.png: no trial has a test-set evaluation yet "
                             "(run `tunefm evaluate RUN`)")
    else:
        result = queries.confusion(run.confusion, trials)
        _, scores, confused = summary.confusion_displays(summary.confusion_records(result), result.pairs)
        sections.append(("Confusion matrix (test set)", figure("confusion.png", draw_confusion(result)),
                         [plot_html(interactive.confusion_heatmap(result)),
                          "<h3>Most confused pairs</h3>" + _table_html(confused, False)]))
        sections.append(("Per-class F1 (test set)", figure("f1.png", draw_f1(result)), [_table_html(scores, False)]))
    return written, sections


def _swap_in(new: Path, out: Path) -> None:
    """Replace `out` by `new`; an old report stays until the new one is complete."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    if old.exists():
        shutil.rmtree(old)
