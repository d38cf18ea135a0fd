"""What tunefm offers: the registered models and the bundled studies, as tables and text.

    catalog.models_table()           name, family, params, source seed
    catalog.studies_table()          name, seed, trials, max epochs, searcher, description
    catalog.describe_study(name)     one study in full: its docstring, keys and figures
    catalog.searchers_text()         the searchers a study can name

The library behind `tunefm models` and `tunefm spaces`.
"""

from __future__ import annotations

import pandas as pd

from tunefm import searchers
from tunefm import study as studies
from tunefm.analysis.summary import fmt_params
from tunefm.analysis.tables import text_table
from tunefm.engine import models


def _seed(source: str) -> str:
    return source.split("_")[0] if source else "-"


def models_table() -> pd.DataFrame:
    rows = []
    for name in models.names():
        spec = models.get(name)
        rows.append({"model": name, "family": spec.family, "params": f"{spec.params:,}",
                     "seed": _seed(spec.source)})
    return pd.DataFrame(rows)


def models_text() -> str:
    lines = [text_table(models_table(), index=False), ""]
    for name in models.names():
        spec = models.get(name)
        options = ", ".join(f"{k}={o.default}" for k, o in spec.options.items())
        lines.append(f"{name}: {spec.description}. {fmt_params(spec.params)} params, GPU share "
                     f"{spec.gpu_fraction:g}" + (f". Options: {options}" if options else ""))
    return "\n".join(lines)


def studies_table() -> pd.DataFrame:
    rows = []
    for name in studies.available():
        study = studies.load(name)
        rows.append({"study": name, "seed": _seed(study.source), "trials": study.num_trials,
                     "max epochs": study.max_epochs, "searcher": study.searcher, "description": study.description})
    return pd.DataFrame(rows)


def describe_study(name_or_path: str) -> str:
    """Everything about one study (a name or a .py file): what it reproduces, its search, its
    fixed values and figures."""
    study = studies.load(name_or_path)
    lines = [f"{study.name}: {study.description}",
             f"source: {study.source or '-'}; searcher: {study.searcher}; trials: {study.num_trials}; "
             f"max epochs: {study.max_epochs}; test set: top {study.test_top} per model"]
    if study.notes:
        lines += ["", study.notes]
    lines += ["", "Search:", *study.search.describe(study)]
    lines += ["", "Fixed (with defaults):"]
    lines += [f"  {key:<14} {value}" for key, value in study.base_config().items()]
    if study.reported:
        lines += ["", "Seed reported:"]
        for row in study.reported:
            figures = ", ".join(f"{k} {v:g}" for k, v in row.figures.items())
            chosen = f"; chose {', '.join(f'{k}={v}' for k, v in row.chosen.items())}" if row.chosen else ""
            note = f" ({row.note})" if row.note else ""
            lines.append(f"  {', '.join(f'{k}={v}' for k, v in row.where.items())}: {figures}{chosen}{note}")
    return "\n".join(lines)


def searchers_text() -> str:
    """One line per registered searcher (tunefm/searchers/): what a study's `searcher=` may say."""
    return "\n".join(f"  {name:<9} {searcher.summary}" for name, searcher in searchers.REGISTRY.items())
