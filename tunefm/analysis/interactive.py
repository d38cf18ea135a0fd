"""The interactive figures of `tunefm report` (plotly): hover a point to see its trial, brush
an axis, zoom; index.html embeds them with plotly.js once, so the page works offline.

    fig = interactive.learning_curves(run.trials, run.epochs, color_by="lr")
    fig.to_html(full_html=False, include_plotlyjs=False)

    learning_curves       every trial's val acc, train loss and val loss per epoch, coloured by a
                          config key; trials ASHA stopped are dotted and end early (x)
    parallel_coordinates  the varied keys and the metric, log axes where values span decades
    grid_heatmaps         the metric over lr x batch size per model; hover: n, mean ± std, epochs
    pareto                every trial's metric against its cost, the front joined
    timeline              each trial as a bar on the slot that ran it, per node: idle capacity
    importance_bars       hyperparameter importance (importance.py), with its method
    confusion_heatmap     the best evaluated trial's test-set confusion matrix

Pure functions of the run's tables; no Ray, no torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from tunefm.analysis import footing, queries, summary
from tunefm.engine.data import CLASSES
from tunefm.run.trial_summary import config_columns

COLORSCALE = "Viridis"
STATUS_COLORS = {"finished": "#2a9d8f", "stopped early": "#e9c46a", "failed": "#e76f51", "interrupted": "#8d99ae",
                 "running": "#264653"}


def varied_keys(trials: pd.DataFrame) -> list[str]:
    """Config keys that take more than one value in this run (seed last)."""
    keys = [c for c in config_columns(trials) if trials[c].nunique(dropna=True) > 1]
    return sorted(keys, key=lambda k: k == "seed")


def spans_decades(values: pd.Series) -> bool:
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    return len(numbers) > 1 and numbers.min() > 0 and numbers.max() / numbers.min() >= 10


def _describe(row: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{k}={summary.fmt_value(row[k])}" for k in keys)


def trial_colors(trials: pd.DataFrame, key: str) -> tuple[dict[str, str], go.Scatter | None]:
    """trial_id -> colour by `key`, and for a numeric key a legend-only trace carrying the
    colour bar (None for a categorical key, whose values go in the legend instead)."""
    values = trials.set_index("trial_id")[key]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) \
        and values.nunique() > 2
    if not numeric:
        levels = list(dict.fromkeys(values.astype(str)))
        palette = {level: qualitative.D3[i % len(qualitative.D3)] for i, level in enumerate(levels)}
        return {t: palette[str(v)] for t, v in values.items()}, None
    log = spans_decades(values)
    scaled = np.log10(values.astype(float)) if log else values.astype(float)
    low, high = float(scaled.min()), float(scaled.max())
    position = (scaled - low) / (high - low) if high > low else scaled * 0
    colors = dict(zip(values.index, sample_colorscale(COLORSCALE, position.fillna(0).tolist())))
    ticks = sorted(values.dropna().unique())
    if len(ticks) > 8:
        ticks = list(np.quantile(values.dropna(), [0, 0.25, 0.5, 0.75, 1]))
    bar = go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                     marker=dict(colorscale=COLORSCALE, cmin=low, cmax=high, color=[low], showscale=True,
                                 colorbar=dict(title=f"{key}" + (" (log)" if log else ""), thickness=12,
                                               tickvals=[math.log10(t) if log else t for t in ticks],
                                               ticktext=[summary.fmt_value(t) for t in ticks])))
    return colors, bar


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, color_by: str = "lr",
                    loss: str = "cross-entropy", rule: str = "ASHA") -> go.Figure:
    keys = varied_keys(trials)
    colors, bar = trial_colors(trials, color_by)
    categorical = bar is None  # each value in the legend, else a colour bar
    panels = [("val_acc", "validation accuracy (fraction)"), ("train_loss", f"train {loss} (nats)"),
              ("val_loss", f"validation {loss} (nats)")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in panels], horizontal_spacing=0.06)
    by_trial = trials.set_index("trial_id")
    shown_levels: set[str] = set()
    for trial_id, history in epochs.sort_values("epoch").groupby("trial_id", sort=False):
        if trial_id not in by_trial.index:
            continue
        row = by_trial.loc[trial_id]
        stopped = bool(row.get("stopped_early", False))
        text = f"{trial_id}<br>{_describe(row, keys)}" + (f"<br>{footing.stopped_why(row, rule)}" if stopped else "")
        level = str(row[color_by])
        for column, (metric, _) in enumerate(panels, 1):
            in_legend = categorical and column == 1 and level not in shown_levels
            if in_legend:
                shown_levels.add(level)
            fig.add_trace(go.Scatter(
                x=history["epoch"], y=history[metric], mode="lines+markers",
                line=dict(color=colors[trial_id], width=1.2, dash="dot" if stopped else "solid"),
                marker=dict(size=[4] * (len(history) - 1) + [9 if stopped else 4],
                            symbol=["circle"] * (len(history) - 1) + ["x" if stopped else "circle"]),
                opacity=0.75, name=f"{color_by}={level}" if categorical else trial_id,
                legendgroup=level if categorical else None, showlegend=in_legend, hovertemplate=f"{text}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>"),
                row=1, col=column)
    if bar is not None:
        fig.add_trace(bar, row=1, col=1)
    for column in (1, 2, 3):
        fig.update_xaxes(title_text="epoch", row=1, col=column)
    fig.update_layout(title=f"Learning curves of every trial, coloured by {color_by} (dotted, x: stopped early)",
                      height=430, margin=dict(t=80, l=50, r=20, b=50))
    return fig


def _dimension(values: pd.Series, label: str) -> dict:
    """A parcoords axis: numbers (on a log10 scale labelled with the values where they span
    decades), or categories as positions labelled with their names."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype(float)
        if spans_decades(numbers):
            ticks = sorted(numbers.dropna().unique())
            if len(ticks) > 8:
                ticks = [10 ** e for e in range(math.floor(math.log10(min(ticks))),
                                                 math.ceil(math.log10(max(ticks))) + 1)]
            return dict(label=f"{label} (log)", values=np.log10(numbers), tickvals=np.log10(ticks),
                        ticktext=[summary.fmt_value(t) for t in ticks])
        return dict(label=label, values=numbers)
    levels = list(dict.fromkeys(values.astype(str)))
    codes = values.astype(str).map({level: i for i, level in enumerate(levels)})
    return dict(label=label, values=codes, tickvals=list(range(len(levels))), ticktext=levels)


def parallel_coordinates(trials: pd.DataFrame, metric: str = "best_val_acc") -> go.Figure:
    data = trials[trials[metric].notna()]
    dimensions = [_dimension(data[k], k) for k in varied_keys(data)]
    dimensions.append(dict(label=summary.label(metric), values=data[metric]))
    fig = go.Figure(go.Parcoords(line=dict(color=data[metric], colorscale=COLORSCALE, showscale=True,
                                           colorbar=dict(title=summary.label(metric))), dimensions=dimensions))
    fig.update_layout(title=f"Parallel coordinates: every trial's varied keys and {summary.label(metric)} "
                            f"(drag along an axis to filter)", height=430, margin=dict(t=90, l=60, r=60, b=30))
    return fig


def in_order(values: pd.Series) -> list:
    """The distinct values, sorted; a binned key's ranges (bins.py) in their own order."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.dropna())
        return [c for c in values.cat.categories if c in present]
    return sorted(values.dropna().unique())


def grid_heatmaps(trials: pd.DataFrame, metric: str = "best_val_acc", rows: str = "lr",
                  cols: str = "batch_size") -> go.Figure | None:
    """One heatmap per model; None where the run has no such grid."""
    if rows not in trials or cols not in trials or trials[metric].isna().all():
        return None
    models = list(dict.fromkeys(trials["model"])) if "model" in trials else ["all"]
    per_row = min(2, len(models))
    fig = make_subplots(rows=math.ceil(len(models) / per_row), cols=per_row, subplot_titles=models,
                        horizontal_spacing=0.12, vertical_spacing=0.14)
    low, high = trials[metric].min(), trials[metric].max()
    for i, model in enumerate(models):
        part = trials if model == "all" else trials[trials["model"] == model]
        cells = part.groupby([rows, cols], observed=True)[[metric, "epochs"]].agg(["mean", "std", "count"])
        row_values, col_values = in_order(part[rows]), in_order(part[cols])
        z, custom = [], []
        for r in row_values:
            z.append([]), custom.append([])
            for c in col_values:
                if (r, c) in cells.index:
                    cell = cells.loc[(r, c)]
                    z[-1].append(cell[(metric, "mean")])
                    std = cell[(metric, "std")]
                    custom[-1].append([int(cell[(metric, "count")]), 0.0 if pd.isna(std) else float(std),
                                       float(cell[("epochs", "mean")])])
                else:
                    z[-1].append(None), custom[-1].append([0, 0.0, 0.0])
        fig.add_trace(go.Heatmap(
            z=z, x=[summary.fmt_value(c) for c in col_values], y=[summary.fmt_value(r) for r in row_values],
            customdata=custom, zmin=low, zmax=high, colorscale=COLORSCALE, showscale=i == 0,
            colorbar=dict(title=summary.label(metric)),
            hovertemplate=(f"{model}<br>{rows}=%{{y}} {cols}=%{{x}}<br>{summary.label(metric)} %{{z:.4f}} ± "
                           "%{customdata[1]:.4f}<br>n=%{customdata[0]}, epochs run %{customdata[2]:.1f}<extra></extra>")),
            row=i // per_row + 1, col=i % per_row + 1)
    fig.update_xaxes(title_text=summary.label(cols), type="category")
    fig.update_yaxes(title_text=summary.label(rows), type="category")
    fig.update_layout(title=f"{summary.label(metric)} over {rows} x {cols}, per model (hover: n, mean ± std, "
                            f"epochs run)", height=330 * math.ceil(len(models) / per_row) + 60,
                      margin=dict(t=90, l=60, r=30, b=40))
    return fig


def pareto(compared: pd.DataFrame, front: pd.DataFrame, left_out: pd.DataFrame, metric: str, cost: str,
           cost_label: str, rule: str = "ASHA") -> go.Figure:
    """The compared trials against their cost with the front joined; the trials left out
    (stopped early, ...) grey and apart, each with its epochs in its hover text."""
    keys = varied_keys(compared if len(compared) else left_out)
    data = compared[compared[metric].notna() & compared[cost].notna()]
    template = "%{text}<br>cost %{x:.4g}<br>metric %{y:.4f}<extra></extra>"

    def hover(frame: pd.DataFrame) -> list[str]:
        return [f"{r.trial_id}<br>{_describe(r, keys)}<br>{int(r.epochs)} epoch(s)"
                + (f"<br>{footing.stopped_why(r, rule)}" if r.get("stopped_early") else "")
                for _, r in frame.iterrows()]

    fig = go.Figure(go.Scatter(x=data[cost], y=data[metric], mode="markers", name="compared trial", text=hover(data),
                               marker=dict(color="#264653", size=7), hovertemplate=template))
    grey = left_out[left_out[metric].notna() & left_out[cost].notna()] if len(left_out) else left_out
    if len(grey):
        fig.add_trace(go.Scatter(x=grey[cost], y=grey[metric], mode="markers", text=hover(grey),
                                 name=f"not compared ({len(grey)}: {', '.join(sorted(set(grey['why'])))})",
                                 marker=dict(color="#c4ccd4", size=7, symbol="x"), hovertemplate=template))
    ordered = front.sort_values(cost)
    fig.add_trace(go.Scatter(x=ordered[cost], y=ordered[metric], mode="lines+markers", name="Pareto front",
                             text=hover(ordered), line=dict(color="#e76f51"), marker=dict(size=10),
                             hovertemplate=template))
    every = pd.concat([data[cost], grey[cost]]) if len(grey) else data[cost]
    fig.update_layout(title=f"Pareto front: {summary.label(metric)} against {summary.label(cost)}", height=430,
                      xaxis=dict(title=cost_label, type="log" if spans_decades(every) else "linear"),
                      yaxis=dict(title=summary.label(metric)), margin=dict(t=70, l=60, r=20, b=50),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def trial_state(row: pd.Series) -> str:
    if row["status"] == "ERROR":
        return "failed"
    if row["status"] == "TERMINATED":
        return "stopped early" if row.get("stopped_early") else "finished"
    return "interrupted" if row["status"] == "INTERRUPTED" else "running"


def timeline(trials: pd.DataFrame, epochs: pd.DataFrame) -> go.Figure | None:
    """Each trial as a bar from its start for its training time, on the first free slot of its
    node (slots: the most trials that ran at once there); gaps are idle capacity."""
    data = trials[trials["started_at"].notna() & trials["total_time_s"].notna()].copy()
    if data.empty:
        return None
    # started_at is taken once the trial's model is built, but Tune's time_total_s also counts
    # that set-up: its share of the first result (time_total_s - epoch_time_s) is left out.
    first = epochs.sort_values("epoch").groupby("trial_id")[["time_total_s", "epoch_time_s"]].first()
    setup = (first["time_total_s"] - first["epoch_time_s"]).clip(lower=0)
    origin = data["started_at"].min()
    data["start"], data["state"] = data["started_at"] - origin, data.apply(trial_state, axis=1)
    data["duration"] = data["total_time_s"] - data["trial_id"].map(setup).fillna(0.0)
    data["end"] = data["start"] + data["duration"]
    lanes, keys = [], varied_keys(trials)
    for node, part in data.sort_values("start").groupby(data["node_id"].fillna("?"), sort=False):
        free_at: list[float] = []
        for index, row in part.iterrows():
            slot = next((i for i, end in enumerate(free_at) if end <= row["start"]), None)
            if slot is None:
                slot, free_at = len(free_at), free_at + [0.0]
            free_at[slot] = row["end"]
            lanes.append((index, f"node {str(node)[:8]} · slot {slot + 1}"))
    data.loc[[i for i, _ in lanes], "lane"] = [lane for _, lane in lanes]
    fig = go.Figure()
    for state, color in STATUS_COLORS.items():
        part = data[data["state"] == state]
        if part.empty:
            continue
        fig.add_trace(go.Bar(
            y=part["lane"], x=part["duration"], base=part["start"], orientation="h", name=state,
            marker=dict(color=color, line=dict(color="white", width=0.5)),
            customdata=[f"{r.trial_id}<br>{_describe(r, keys)}<br>{int(r.epochs)} epoch(s)" for _, r in part.iterrows()],
            hovertemplate="%{customdata}<br>from %{base:.1f} s for %{x:.1f} s<extra></extra>"))
    fig.update_layout(title="Timeline: each trial on the slot that ran it (gaps: idle capacity)", barmode="overlay",
                      height=max(260, 40 * data["lane"].nunique() + 120),
                      xaxis=dict(title="seconds since the first trial started (s)"),
                      yaxis=dict(title="node and slot", categoryorder="category descending"),
                      margin=dict(t=70, l=140, r=20, b=50))
    return fig


def importance_bars(table: pd.DataFrame, method_description: str, metric: str) -> go.Figure:
    ordered = table.sort_values("share")
    fig = go.Figure(go.Bar(x=ordered["share"], y=ordered["term"], orientation="h", marker=dict(color="#2a9d8f"),
                           text=[f"{s:.1%}" for s in ordered["share"]], textposition="outside",
                           hovertemplate="%{y}: %{x:.1%} of the variation<extra></extra>"))
    fig.update_layout(title=f"Hyperparameter importance: share of the variation in {summary.label(metric)}<br>"
                            f"<sub>{method_description}</sub>", height=120 + 40 * len(table),
                      xaxis=dict(title="share of the variation (fraction)", range=[0, 1.1], tickformat=".0%"),
                      yaxis=dict(title="term"), margin=dict(t=90, l=200, r=20, b=50))
    return fig


def confusion_heatmap(result: queries.Confusion) -> go.Figure:
    matrix = result.matrix.to_numpy()
    fig = go.Figure(go.Heatmap(z=matrix, x=list(CLASSES), y=list(CLASSES), colorscale="Blues",
                               text=matrix, texttemplate="%{text}", colorbar=dict(title="images"),
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"))
    fig.update_layout(title=f"Test-set confusion matrix of trial {result.trial_id} (accuracy {result.accuracy:.4f})",
                      height=560, xaxis=dict(title="predicted class"),
                      yaxis=dict(title="true class", autorange="reversed"), margin=dict(t=70, l=110, r=20, b=90))
    return fig


def plotly_js() -> str:
    """plotly.js itself, for a page that fetches nothing."""
    return get_plotlyjs()
