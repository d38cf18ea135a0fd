"""`tunefm summarize`: a run's analysis tables rendered as text, markdown, CSV or JSON.

    run = store.load_run(store.resolve_run(None, "results"))
    print(summary.render(run, SummaryOptions(sections=("best", "pareto")), "table"))

`tables()` computes the machine-readable tables (one per JSON key):

    best             one row per model (queries.best)
    reference        what the study's source seed reported beside this run's value: where,
                     figure, seed, run, seed_chose, run_chose, n, note (queries.reported_vs_run)
    grid             model, <rows>, <cols>, <metric>, n          (long form of the pivots)
    importance       method, term, share of the metric's variation, and for an ANOVA df,
                     sum_sq, F, p; metric, trials, stopped_early (importance.py)
    pareto           the non-dominated trials, cheapest first, among the trials that
                     trained all their epochs (footing.pareto_basis): stopped_early and
                     up_to_epoch say which figures each row compares
    overfit          one row per trial: final losses, gap, min val loss epoch, flag
    overfit_grid     <rows>, <cols>, mean_gap, n, overfitting    (all models pooled)
    confusion        one row per true class: trial_id, label, class, precision, recall, f1,
                     support, then the count predicted as each class (by class name)
    confusion_pairs  trial_id, true_class, pred_class, count, share (of the true class)
    compared         one row per section shown: which trials it compared and at which
                     epochs (section, trials, basis, up_to_epoch, left_out, left_out_why, text)

`render()` prints them: `json` is one object with those keys, each a list of records;
`csv` gives each table under a `# key` line (a single table gets no comment line and no
`compared` table: its rows carry their own footing);
`table` (80-column terminal) and `markdown` show grids and the confusion matrix as
pivots. Nothing here imports Ray or torch.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, replace

import pandas as pd

from tunefm.analysis import bins, footing, importance, queries
from tunefm.analysis.tables import WIDTH, markdown_table, text_table
from tunefm.engine.data import CLASSES
from tunefm.errors import UserError
from tunefm.run import store

SECTIONS = ("best", "reference", "grid", "importance", "pareto", "overfit", "confusion")
FORMATS = ("table", "markdown", "csv", "json")
TABLES = {"best": ["best"], "reference": ["reference"], "grid": ["grid"], "importance": ["importance"],
          "pareto": ["pareto"], "overfit": ["overfit", "overfit_grid"], "confusion": ["confusion", "confusion_pairs"]}


@dataclass(frozen=True)
class SummaryOptions:
    sections: tuple[str, ...] = ()  # empty: every section
    metric: str = "best_val_acc"
    rows: str | None = None  # None: queries.grid_axes picks (lr, batch_size where they vary)
    cols: str | None = None
    agg: str = "mean"
    cost: str | None = None  # None: the run's --objectives cost, else time_per_epoch_s (`default_cost`)
    include_stopped: bool = False  # pareto: compare trials stopped early too, at their last epoch
    trial: str | None = None  # confusion: this trial instead of the best evaluated one
    importance_method: str = "auto"  # importance.METHODS

    def with_axes(self, run: store.RunTables) -> "SummaryOptions":
        """These options with the grid's rows and columns decided for this run."""
        return replace(self, **dict(zip(("rows", "cols"), grid_axes(run, self.rows, self.cols))))

    def with_cost(self, run: store.RunTables) -> "SummaryOptions":
        """These options with the Pareto cost decided for this run (`default_cost` unless given)."""
        return replace(self, cost=self.cost or default_cost(run))

    def chosen_sections(self) -> tuple[str, ...]:
        for section in self.sections:
            if section not in SECTIONS:
                raise UserError(f"--section must be one of {', '.join(SECTIONS)}, got {section!r}")
        return tuple(s for s in SECTIONS if s in self.sections) if self.sections else SECTIONS

    @property
    def confusion_required(self) -> bool:
        """Asked for by name (or a --trial): a run without test results is then an error."""
        return self.trial is not None or "confusion" in self.sections


# A cost objective of the search (--objectives COLUMN:min) as the Pareto cost it stands for
OBJECTIVE_COSTS = {"time_per_epoch_s": "time_per_epoch_s", "epoch_time_s": "time_per_epoch_s", "params": "params",
                   "time_to_90_train_acc_s": "time_to_90_train_acc_s", "total_time_s": "total_time_s",
                   "time_total_s": "total_time_s"}


def default_cost(run: store.RunTables) -> str:
    """The Pareto front's cost: the first cost the search's --objectives minimized (what its
    stopping rule weighed against accuracy), else time_per_epoch_s, a property of the
    configuration unlike total_time_s under early stopping."""
    return next((OBJECTIVE_COSTS[o.column] for o in footing.run_objectives(run.info)
                 if o.direction == "min" and o.column in OBJECTIVE_COSTS), "time_per_epoch_s")


def grid_axes(run: store.RunTables, rows: str | None = None, cols: str | None = None) -> tuple[str, str]:
    """The grid's two config keys for this run (queries.grid_axes, the study's grid keys first)."""
    return queries.grid_axes(run.trials, rows, cols, order=list(run.info.get("study", {}).get("grid", {})))


def confusion_records(result: queries.Confusion) -> pd.DataFrame:
    per_class = result.per_class.reset_index(drop=True)
    counts = result.matrix.reset_index(drop=True)
    return pd.concat([per_class.assign(trial_id=result.trial_id)[
        ["trial_id", "label", "class", "precision", "recall", "f1", "support"]], counts], axis=1)


def tables(run: store.RunTables, options: SummaryOptions) -> dict[str, pd.DataFrame]:
    """The machine-readable tables of the chosen sections, keyed as in the JSON output
    (`options` with its grid axes decided: SummaryOptions.with_axes)."""
    trials = run.trials
    out: dict[str, pd.DataFrame] = {}
    sections = options.chosen_sections()
    if "best" in sections:
        out["best"] = queries.best(trials, options.metric)
    if "reference" in sections:
        out["reference"] = queries.reported_vs_run(trials, run.info.get("study", {}).get("reported", []))
    binnings = grid_binnings(run, options) if {"grid", "overfit"} & set(sections) else {}
    if "grid" in sections:
        out["grid"] = queries.grid(bins.apply(trials, binnings), options.metric, options.rows, options.cols,
                                   options.agg)
    if "importance" in sections:
        out["importance"] = importance_records(trials, options)
    if "pareto" in sections:
        out["pareto"] = pareto_records(run, options)
    if "overfit" in sections:
        out["overfit"] = queries.overfit(trials, run.epochs)
        out["overfit_grid"] = queries.overfit_grid(bins.apply(out["overfit"], binnings), options.rows, options.cols)
    if "confusion" in sections:
        if run.confusion.empty and not options.confusion_required:
            out["confusion"] = pd.DataFrame(columns=["trial_id", "label", "class"])
            out["confusion_pairs"] = pd.DataFrame(columns=["trial_id", "true_class", "pred_class", "count", "share"])
        else:
            result = queries.confusion(run.confusion, trials, options.trial)
            out["confusion"] = confusion_records(result)
            out["confusion_pairs"] = result.pairs.assign(trial_id=result.trial_id)[
                ["trial_id", "true_class", "pred_class", "count", "share"]]
    out = {key: frame.reset_index(drop=True) for key, frame in out.items()}
    for key in ("grid", "overfit_grid"):
        if key in out:
            out[key].attrs["binned"] = [b.describe() for b in binnings.values()]
    if set(COMPARED_SECTIONS) & set(out):
        out["compared"] = compared_records(trials, out, footing.stopping_rule(run.info))
    return out


def grid_binnings(run: store.RunTables, options: SummaryOptions) -> dict[str, bins.Binning]:
    """The grid axes drawn from a range (random, TPE studies), grouped into a few ranges."""
    return bins.for_grid(run.trials, run.info.get("study", {}).get("space", {}), (options.rows, options.cols))


def pareto_front(run: store.RunTables, options: SummaryOptions) -> tuple[pd.DataFrame, footing.Basis]:
    """The front (`queries.pareto`) over the trials `footing.pareto_basis` compares, and that basis."""
    queries.check_column(run.trials, options.metric, "--metric")
    options = options.with_cost(run)
    costed = queries.with_cost(run.trials, options.cost)
    basis = footing.pareto_basis(costed, run.epochs, options.metric, options.cost, options.include_stopped,
                                 footing.stopping_rule(run.info))
    return queries.pareto(basis.compared, options.metric, options.cost), basis


def pareto_records(run: store.RunTables, options: SummaryOptions) -> pd.DataFrame:
    """The front, with its basis and the trials it left out in `.attrs` (`with_basis`)."""
    return with_basis(*pareto_front(run, options), options.metric, footing.stopping_rule(run.info))


def with_basis(front: pd.DataFrame, basis: footing.Basis, metric: str, rule: str = "ASHA") -> pd.DataFrame:
    """`front` with attrs: basis (plain data), text (in words), and the trials listed after
    the front, best first: `listed` (title, frame with why). By default those are the trials
    left out; with --include-stopped, the stopped trials that were compared but are not on it."""
    if basis.mode == "all trials":
        compared = basis.compared
        listed = compared[footing.stopped(compared) & ~compared["trial_id"].isin(front["trial_id"])]
        listed = listed.assign(why=[footing.stopped_why(row, rule) for _, row in listed.iterrows()])
        title = f"Stopped early, compared at their last epoch, not on the front ({len(listed)} trials)"
    else:
        listed = basis.left_out
        title = f"Not compared ({len(listed)} trials; * = stopped early)"
    listed = listed.sort_values(metric, ascending=not queries.higher_is_better(metric), kind="stable")
    front.attrs.update(basis=basis.record(), text=basis.text, listed=(
        title, listed[[c for c in front.columns if c in listed] + ["why"]].reset_index(drop=True)))
    return front


COMPARED_SECTIONS = ("best", "grid", "importance", "pareto", "overfit")  # those the `compared` table covers
READ_AT = {"best": "its best epoch", "grid": "its best epoch", "importance": "its best epoch",
           "overfit": "its last epoch"}  # the epoch the sections that keep every trial read it at


def compared_records(trials: pd.DataFrame, found: dict[str, pd.DataFrame], rule: str = "ASHA") -> pd.DataFrame:
    """One row per section shown: which trials it compared, at which epochs, and what it left out."""
    rows = []
    for section in (s for s in COMPARED_SECTIONS if s in found):
        if section == "pareto":
            rows.append({"section": section, **found[section].attrs["basis"], "text": found[section].attrs["text"]})
        else:
            rows.append({"section": section, "trials": len(trials), "basis": "each trial as far as it trained",
                         "up_to_epoch": None, "left_out": 0, "left_out_why": "",
                         "text": footing.scope_text(trials, READ_AT[section], rule)})
    columns = ["section", "trials", "basis", "up_to_epoch", "left_out", "left_out_why", "text"]
    return pd.DataFrame(rows, columns=columns)


def importance_records(trials: pd.DataFrame, options: SummaryOptions) -> pd.DataFrame:
    """The importance table, its notes in `.attrs["notes"]`. A run too small for it gets an
    empty table and why, unless the section was asked for by name."""
    importance.check_method(options.importance_method)
    try:
        result = importance.importance(trials, options.metric, options.importance_method)
    except UserError as e:
        if "importance" in options.sections or options.importance_method != "auto":
            raise
        frame = pd.DataFrame(columns=["method", "term", "share"])
        frame.attrs["notes"] = [str(e)]
        return frame
    frame = importance.records(result)
    frame.attrs["notes"] = result.notes()
    return frame


# ---- number formats for people ----------------------------------------------------------

def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def fmt_acc(x, std=None) -> str:
    if _missing(x):
        return "-"
    return f"{x:.4f}" if _missing(std) else f"{x:.4f}±{std:.4f}"


def fmt_loss(x) -> str:
    if _missing(x):
        return "-"
    return f"{x:.3f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2g}"  # seed 000 reports 0.00033


def fmt_gap(x) -> str:
    return "-" if _missing(x) else f"{x:+.3f}"


def fmt_seconds(x) -> str:
    return "-" if _missing(x) else (f"{x:.2f}" if x < 100 else f"{x:,.0f}")


def fmt_count(x) -> str:
    if _missing(x):
        return "-"
    return f"{x:g}" if float(x) == int(x) else f"{x:.1f}"


def fmt_params(x) -> str:
    if _missing(x):
        return "-"
    x = int(x)
    return f"{x / 1e6:.2f}M" if x >= 1e6 else (f"{x / 1e3:.1f}k" if x >= 1e4 else f"{x:,}")


def fmt_value(x) -> str:
    if _missing(x):
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"  # hyperopt draws lr=0.00100327...; four digits tell them apart
    return str(x)


METRIC_LABELS = {"best_val_acc": "val acc", "test_acc": "test acc", "val_loss_at_best": "val loss",
                 "total_time_s": "total s", "time_per_epoch_s": "s/epoch", "params": "params",
                 "gpu_seconds": "GPU s", "batch_size": "batch", "time_to_90_train_acc_s": "s to 90% train"}
FIGURE_LABELS = {**METRIC_LABELS, "final_val_loss": "final val loss", "final_train_loss": "final train loss",
                 "test_loss": "test loss", "min_train_loss": "min train loss",
                 "min_train_loss_epoch": "min train loss epoch", "best_epoch": "best epoch"}


def label(column: str) -> str:
    return METRIC_LABELS.get(column, column)


def fmt_metric(column: str, x) -> str:
    if column.endswith("_acc"):
        return fmt_acc(x)
    if column == "params":
        return fmt_params(x)
    if column.endswith("epoch") or column == "epochs":  # min_train_loss_epoch is a count, not a loss
        return fmt_count(x)
    if column.endswith("_s") or column == "gpu_seconds":
        return fmt_seconds(x)
    if "loss" in column or column == "overfit_gap":
        return fmt_loss(x)
    return fmt_value(x)


# ---- display frames (strings), shared by table, markdown and the HTML report -------------

def _config_display(frame: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    return {label(c): [fmt_value(v) for v in frame[c]] for c in columns}


def best_display(best: pd.DataFrame, metric: str) -> pd.DataFrame:
    if best.empty:
        return pd.DataFrame()
    seeds = (best["n"] > 1).any()
    config = [c for c in best.columns if c not in {
        "model", "params", "n", metric, f"{metric}_std", "test_acc", "test_acc_std", "test_n", "min_train_loss",
        "min_train_loss_epoch", "val_loss_at_best", "time_per_epoch_s", "epochs", "trial_ids"}]
    shown = {"model": best["model"], "params": best["params"].map(fmt_params)}
    if seeds:
        shown["n"] = best["n"].map(fmt_count)
    shown[label(metric)] = [fmt_acc(m, s) if metric.endswith("_acc") else fmt_metric(metric, m)
                            for m, s in zip(best[metric], best[f"{metric}_std"])]
    shown["test acc"] = [fmt_acc(m, s) for m, s in zip(best["test_acc"], best["test_acc_std"])]
    shown.update(_config_display(best, config))
    shown["min train@ep"] = [f"{fmt_loss(loss)} @ {fmt_count(epoch)}" if not _missing(loss) else "-"
                             for loss, epoch in zip(best["min_train_loss"], best["min_train_loss_epoch"])]
    shown["val loss"] = best["val_loss_at_best"].map(fmt_loss)
    shown["s/epoch"] = best["time_per_epoch_s"].map(fmt_seconds)
    return pd.DataFrame(shown)


def reference_display(reference: pd.DataFrame) -> pd.DataFrame:
    shown = {"where": reference["where"], "figure": reference["figure"].map(lambda f: FIGURE_LABELS.get(f, f)),
             "seed reported": [fmt_metric(f, v) for f, v in zip(reference["figure"], reference["seed"])],
             "this run": [fmt_metric(f, v) for f, v in zip(reference["figure"], reference["run"])]}
    if (reference["seed_chose"] != "").any():
        shown["seed chose"], shown["this run chose"] = reference["seed_chose"], reference["run_chose"]
    shown["seed epochs"] = reference["seed_epochs"].map(fmt_count)
    shown["run epochs"] = reference["run_epochs"].map(fmt_count)
    if (reference["note"] != "").any():
        shown["note"] = reference["note"]
    return pd.DataFrame(shown)


def _epochs(value) -> str:
    return "" if _missing(value) else f"{fmt_count(value)} epoch{'' if value == 1 else 's'}"


def reference_heading(first: pd.Series) -> str:
    """`where (note): seed chose X (100 epochs); this run chose Y (30 epochs)`, for one small table."""
    heading = first["where"] + (f" ({first['note']})" if first["note"] else "")
    seed, run = _epochs(first["seed_epochs"]), _epochs(first["run_epochs"])
    if first["seed_chose"]:
        return (heading + f": seed chose {first['seed_chose']}" + (f" ({seed})" if seed else "")
                + f"; this run chose {first['run_chose'] or '-'}" + (f" ({run})" if run else ""))
    said = [f"{who} trained {epochs}" for who, epochs in (("seed", seed), ("this run", run)) if epochs]
    return heading + (": " + ", ".join(said) if said else "")


def reference_parts(reference: pd.DataFrame) -> list[tuple[str, pd.DataFrame, bool]]:
    """The reference table whole when it fits the terminal, else one small table per `where`
    with the choices, the epochs and the note in its subheading (long `where`s like seed
    004's). Rows about trials this run does not have are left out (the note names them)."""
    reference = rows_in_run(reference)
    if reference.empty:
        return []
    display = reference_display(reference)
    if max(len(line) for line in text_table(display, False, width=10 ** 6).splitlines()) <= WIDTH:
        return [("", display, False)]
    return [(reference_heading(rows.iloc[0]), reference_display(rows)[["figure", "seed reported", "this run"]], False)
            for _, rows in reference.groupby("where", sort=False)]


def rows_in_run(reference: pd.DataFrame) -> pd.DataFrame:
    """The reference rows about trials this run has (a run cut by --set has fewer)."""
    return reference[reference["trials"] > 0]


def reference_note(reference: pd.DataFrame) -> str:
    if reference.empty:
        return "this run's study records no reported figures"
    note = ("this run: the configuration with the best mean val acc among the trials that row is about; "
            "- = not evaluated on the test set")
    absent = reference.loc[reference["trials"] == 0, "where"].unique()
    return note + (f"\nnot in this run: {', '.join(absent)}" if len(absent) else "")


def pivot_display(cells: pd.DataFrame, rows: str, cols: str, text: list[str]) -> pd.DataFrame:
    """Long-form cells as a rows x cols table of `text` (one string per cell), "-" where empty."""
    table = cells.assign(text=text).pivot(index=rows, columns=cols, values="text").fillna("-")
    table.index = [fmt_value(v) for v in table.index]
    table.columns = [fmt_value(v) for v in table.columns]
    table.index.name, table.columns.name = label(rows), label(cols)
    return table


def grid_displays(cells: pd.DataFrame, metric: str, rows: str, cols: str) -> dict[str, pd.DataFrame]:
    """One pivot per model (or a single one when model is itself an axis); `*` marks cells
    whose every trial ASHA stopped early."""
    models = [None] if "model" in (rows, cols) or "model" not in cells.columns else list(dict.fromkeys(cells["model"]))
    out = {}
    for model in models:
        part = cells if model is None else cells[cells["model"] == model]
        text = [fmt_metric(metric, v) + ("*" if s and s == n else "")
                for v, n, s in zip(part[metric], part["n"], part["stopped"])]
        out[model or "all"] = pivot_display(part, rows, cols, text)
    return out


def trials_display(frame: pd.DataFrame, columns: dict[str, callable]) -> pd.DataFrame:
    config = [c for c in frame.columns if c not in columns and c != "trial_id"]
    shown = {"trial": frame["trial_id"], **_config_display(frame, config)}
    shown.update({label(c): frame[c].map(f) for c, f in columns.items()})
    return pd.DataFrame(shown)


def importance_display(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame()
    shown = {"term": table["term"], "share": table["share"].map(lambda x: "-" if _missing(x) else f"{x:.1%}")}
    if "sum_sq" in table:
        shown["df"] = table["df"].map(fmt_count)
        shown["sum sq"] = table["sum_sq"].map(lambda x: "-" if _missing(x) else f"{x:.4g}")
        shown["F"] = table["F"].map(lambda x: "-" if _missing(x) else f"{x:.1f}")
        shown["p"] = table["p"].map(lambda x: "-" if _missing(x) else f"{x:.2g}")
    return pd.DataFrame(shown)


def pareto_display(front: pd.DataFrame, metric: str, cost: str) -> pd.DataFrame:
    """The front (or the trials it left out, with `why`); `*` after the epochs marks a trial
    stopped early, `rung` the rung where the stopping rule stopped it, `up to` the epoch its
    figures come from where that is not its last."""
    shown = front.drop(columns=[c for c in ("epochs", "stopped_early", "stopped_at_rung", "up_to_epoch", "why")
                                if c in front])
    table = trials_display(shown, {metric: lambda x: fmt_metric(metric, x), cost: lambda x: fmt_metric(cost, x)})
    table["epochs"] = [fmt_count(e) + ("*" if s else "") for e, s in zip(front["epochs"], footing.stopped(front))]
    if "stopped_at_rung" in front and front["stopped_at_rung"].notna().any():  # where the rule stopped it
        table["rung"] = front["stopped_at_rung"].map(lambda r: "" if pd.isna(r) else fmt_count(r))
    if "up_to_epoch" in front and (front["up_to_epoch"] != front["epochs"]).any():
        table["up to"] = front["up_to_epoch"].map(fmt_count)
    if "why" in front:
        why = front["why"].str.replace(r" at rung \d+$", "", regex=True) if "rung" in table else front["why"]
        if why.nunique() > 1:
            table["why"] = why
    return table


def pareto_heading(metric: str, cost: str) -> str:
    if cost in footing.CUMULATIVE_COSTS:
        return f"Pareto front: {label(metric)} vs {label(cost)}, which counts early stopping as savings"
    direction = "higher" if queries.higher_is_better(metric) else "lower"
    return f"Pareto front: {label(metric)} ({direction} is better) vs {label(cost)} (lower is better)"


def pareto_note(front: pd.DataFrame, metric: str, cost: str, scored: int) -> str:
    """Which trials the front compared; what --cost total_time_s and --include-stopped mean."""
    basis, (_, listed) = front.attrs["basis"], front.attrs["listed"]
    lines = [f"Compared: {front.attrs['text']}.",
             f"{len(front)} of {basis['trials']} compared trials are on the front"
             + (f" ({scored} trials have a result)" if scored != basis["trials"] else "")]
    if cost in footing.CUMULATIVE_COSTS:
        direction = "higher" if queries.higher_is_better(metric) else "lower"
        lines.append(f"{cost} counts early stopping as savings: a trial stopped early looks cheap because it was "
                     f"stopped, not because its configuration is cheap (--cost time_per_epoch_s compares "
                     f"configurations); {direction} {label(metric)} and lower {label(cost)} are better")
    if basis["basis"] == "all trials" and "stopped_early" in front:
        lines.append(f"{int(front['stopped_early'].sum())} trials on the front were stopped early (marked *); "
                     f"the {len(listed)} stopped early that are not on it are listed after the front")
    elif len(listed):
        stopped = "--include-stopped compares trials stopped early too, at their last epoch"
        lines.append(f"Not compared: {basis['left_out_why']} (listed after the front)"
                     + (f"; {stopped}" if basis["basis"] == "ran to the end" else ""))
    return "\n".join(lines)


def overfit_display(gaps: pd.DataFrame) -> pd.DataFrame:
    table = trials_display(gaps.drop(columns=["min_val_loss", "val_rise"]), {
        "epochs": fmt_count, "final_train_loss": fmt_loss, "final_val_loss": fmt_loss, "gap": fmt_gap,
        "min_val_loss_epoch": fmt_count, "epochs_past_min": fmt_count,
        "overfitting": lambda flag: "yes" if flag else ""})
    return table.rename(columns={"epochs": "ep", "final_train_loss": "train", "final_val_loss": "val",
                                 "min_val_loss_epoch": "min@", "epochs_past_min": "past", "overfitting": "overfit"})


def confusion_displays(records: pd.DataFrame, pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(matrix with short headers, per-class scores, most-confused pairs)."""
    matrix = records[list(CLASSES)].copy()
    matrix.index = [f"{i} {name}" for i, name in enumerate(CLASSES)]
    matrix.index.name = "true \\ predicted"
    matrix.columns = [str(i) for i in range(len(CLASSES))]
    scores = pd.DataFrame({"class": records["class"], "precision": records["precision"].map(fmt_acc),
                           "recall": records["recall"].map(fmt_acc), "F1": records["f1"].map(fmt_acc),
                           "support": records["support"].map(fmt_count)})
    confused = pd.DataFrame({"true class": pairs["true_class"], "predicted as": pairs["pred_class"],
                             "count": pairs["count"].map(fmt_count),
                             "share of true class": pairs["share"].map(lambda x: f"{x:.1%}")})
    return matrix, scores, confused


# ---- rendering ---------------------------------------------------------------------------

def run_header(run: store.RunTables) -> list[str]:
    """Lines saying which run this is and how far it got."""
    info, trials = run.info, run.trials
    study = info.get("study", {}).get("name", "?")
    evaluated = int(trials["test_acc"].notna().sum()) if "test_acc" in trials else 0
    stopped = int(trials["stopped_early"].sum()) if "stopped_early" in trials else 0
    sizes = info.get("data", {}).get("sizes", {})
    data = f"; data {sizes['train']} train / {sizes['val']} val / {sizes['test']} test" if sizes else ""
    return [f"Run {run.run_dir}",
            f"Study {study}, {info.get('status', 'status unknown')}{data}",
            f"{len(trials)} trials, {stopped} stopped early, {int(trials['epochs'].sum())} epochs trained, "
            f"{evaluated} evaluated on the test set"]


def blocks(run: store.RunTables, found: dict[str, pd.DataFrame], options: SummaryOptions):
    """(heading, note, [(subheading, display frame, show index)]) per section, for people."""
    metric, rows, cols = options.metric, options.rows, options.cols
    compared = (dict(zip(found["compared"]["section"], found["compared"]["text"])) if "compared" in found else {})

    def note(section: str, *lines: str) -> str:
        """`Compared: ...` first, then the section's own notes."""
        return "\n".join([f"Compared: {compared[section]}.", *(line for line in lines if line)])

    out = []
    if "best" in found:
        out.append((f"Best configuration per model (by {label(metric)})",
                    note("best", "mean±std over seeds; n = seeds"
                         if (found["best"].get("n", pd.Series(dtype=int)) > 1).any() else ""),
                    [("", best_display(found["best"], metric), False)]))
    if "reference" in found and (len(found["reference"]) or "reference" in options.sections):
        source = run.info.get("study", {}).get("source") or "its source"
        out.append((f"Seed reported ({source}) | this run", reference_note(found["reference"]),
                    reference_parts(found["reference"])))
    if "grid" in found:
        pivots = grid_displays(found["grid"], metric, rows, cols)
        rule = footing.stopping_rule(run.info)
        stopped = f"; * = stopped early by {rule}" if (found["grid"]["stopped"] > 0).any() else ""
        binned = "".join(f"; {text}" for text in found["grid"].attrs.get("binned", []))
        out.append((f"{label(metric)} ({options.agg}) by {rows} (rows) x {cols} (columns)",
                    note("grid", f"cells: {options.agg} over the trials with those values{binned}{stopped}"),
                    [(model, table, True) for model, table in pivots.items()] or [("", pd.DataFrame(), False)]))
    if "importance" in found:
        table = found["importance"]
        out.append((f"Hyperparameter importance: share of the variation in {label(metric)}",
                    note("importance", "; ".join(table.attrs.get("notes", []))),
                    [("", importance_display(table), False)]))
    if "pareto" in found:
        front = found["pareto"]
        title, listed = front.attrs["listed"]
        parts = [("", pareto_display(front, metric, options.cost), False)]
        if len(listed):
            parts.append((title, pareto_display(listed, metric, options.cost), False))
        out.append((pareto_heading(metric, options.cost),
                    pareto_note(front, metric, options.cost, int(run.trials[metric].notna().sum())), parts))
    if "overfit" in found:
        gaps = found["overfit"]
        flagged = int(gaps["overfitting"].sum()) if len(gaps) else 0
        gap_cells = found["overfit_grid"]
        mean_gap = (pivot_display(gap_cells, rows, cols, [fmt_gap(g) for g in gap_cells["mean_gap"]])
                    if len(gap_cells) else pd.DataFrame())
        out.append(("Overfitting: gap = final val loss - final train loss",
                    note("overfit", f"{flagged} of {len(gaps)} trials overfit (final val loss >= 10% above its "
                                    f"minimum while train loss kept falling)"),
                    [("", overfit_display(gaps), False),
                     (f"Mean gap by {rows} x {cols}, all models", mean_gap, True)]))
    if "confusion" in found:
        records = found["confusion"]
        if records.empty:
            out.append(("Confusion matrix", "no trial has a test-set evaluation yet; run `tunefm evaluate RUN`", []))
        else:
            trial_id = records["trial_id"].iloc[0]
            matrix, scores, confused = confusion_displays(records, found["confusion_pairs"])
            accuracy = records[list(CLASSES)].to_numpy().trace() / records["support"].sum()
            out.append((f"Confusion matrix of trial {trial_id} on the test set (accuracy {accuracy:.4f})",
                        "columns: predicted class by number", [("", matrix, True), ("Per class", scores, False),
                                                               ("Most confused", confused, False)]))
    return out


def wrap(line: str) -> list[str]:
    """A note wrapped to the terminal, never inside an option's name (--include-stopped)."""
    return textwrap.wrap(line, WIDTH, break_on_hyphens=False)


def render(run: store.RunTables, options: SummaryOptions, fmt: str = "table") -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if {"grid", "overfit"} & set(options.chosen_sections()):  # decided once, for the tables and their headings
        options = options.with_axes(run)
    options = options.with_cost(run)
    found = tables(run, options)
    if fmt == "json":
        return json.dumps({key: json.loads(frame.to_json(orient="records", double_precision=15)) for key, frame in found.items()},
                          indent=1)
    if fmt == "csv":
        parts = []
        if len(found) == 2 and "compared" in found:  # one table: its rows say what they compare
            found.pop("compared")
        for key, frame in found.items():
            text = frame.to_csv(index=False)
            parts.append(text if len(found) == 1 else f"# {key}\n{text}")
        return "\n".join(parts).rstrip("\n")
    header = run_header(run)
    lines = [f"# {header[0]}", "", *(f"{h}  " for h in header[1:])] if fmt == "markdown" else header
    for heading, note, parts in blocks(run, found, options):
        lines += ["", f"## {heading}" if fmt == "markdown" else f"{heading}\n{'=' * min(len(heading), WIDTH)}"]
        for line in note.splitlines():
            lines += [f"{line}  "] if fmt == "markdown" else wrap(line)
        for subheading, frame, index in parts:
            if subheading:
                lines += ["", f"### {subheading}"] if fmt == "markdown" else ["", *wrap(f"{subheading}:")]
            lines += ["", markdown_table(frame, index) if fmt == "markdown" else text_table(frame, index)]
    return "\n".join(lines)
