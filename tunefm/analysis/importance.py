"""Which hyperparameters mattered: the share of a metric's variation each one explains.

    result = importance.importance(run.trials, metric="best_val_acc")   # method="auto"
    result.method, result.table          # "anova", one row per term: df, sum_sq, share, F, p

Two kinds of study, two methods, and each result says which produced it:
- **A full-factorial grid** (every combination of the varied keys present, each the same
  number of times): an exact analysis of variance (statsmodels' `ols` and `anova_lm`), with
  no model fitted beyond the design itself. Terms: each varied key's main effect, the lr x
  batch size interaction where both vary, and what is left. With repeated seeds (every
  grid point run with the same number of seeds), what is left is split into the other
  interactions and the seed-to-seed noise (the residual of the model with every
  interaction: the variation no choice of hyperparameters explains). A share is the
  term's sum of squares over the total, so the shares add up to 1.
- **Any other study** (hyperopt, random, a grid with holes): Optuna's fANOVA (a random
  forest's functional ANOVA) or PED-ANOVA (how each key's distribution differs among the
  top trials), run on an in-memory Optuna study built from the trials. The importances add
  up to 1; they are estimates from a surrogate, not an exact decomposition.

The metric of a trial that ASHA stopped early comes from the epochs it ran: its best val
acc over 1 epoch, say, against 3 for a trial that ran to the end. Those trials stay in (they
are part of the grid the design needs); a result says how many there were. `seed` is never
a factor: repeated seeds are the replicates. Pure pandas, statsmodels and Optuna; no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tunefm import optional
from tunefm.analysis import queries
from tunefm.errors import UserError
from tunefm.run.trial_summary import config_columns

METHODS = ("auto", "anova", "fanova", "ped-anova")
METHOD_NAMES = {
    "anova": "analysis of variance over the full-factorial grid (statsmodels ols + anova_lm, type II sums of "
             "squares; exact for a balanced design)",
    "fanova": "fANOVA (Optuna FanovaImportanceEvaluator, a random-forest surrogate, seed 0)",
    "ped-anova": "PED-ANOVA (Optuna PedAnovaImportanceEvaluator: the top 10% of trials against all)",
}
INTERACTION = ("lr", "batch_size")


@dataclass
class Importance:
    """One importance analysis: the method, what it was run on, and its table."""

    method: str  # anova | fanova | ped-anova
    metric: str
    factors: list[str]
    table: pd.DataFrame  # anova: term, df, sum_sq, share, F, p; optuna: term, importance (= share)
    trials: int  # trials with the metric, the ones analysed
    stopped_early: int  # of those, stopped by ASHA: their metric comes from fewer epochs
    seeds: int  # replicates per grid point (anova), else 1

    @property
    def description(self) -> str:
        return METHOD_NAMES[self.method]

    def notes(self) -> list[str]:
        lines = [f"method: {self.description}",
                 f"{self.trials} trials; metric {self.metric}; factors: {', '.join(self.factors)}"]
        if self.stopped_early:
            lines.append(f"{self.stopped_early} of them stopped early by ASHA: their {self.metric} comes from the "
                         f"epochs they ran, so early stopping is part of the effects it followed from")
        if self.method == "anova":
            lines.append(f"{self.seeds} seed(s) per grid point" + (
                ": the residual of the full model is the seed-to-seed noise" if self.seeds > 1 else
                "; one seed, so the residual holds the other interactions and seed noise together"))
        return lines


def factors_of(trials: pd.DataFrame) -> list[str]:
    """The config keys that vary across the trials (seed excluded: seeds are replicates)."""
    return [c for c in config_columns(trials) if c != "seed" and trials[c].nunique(dropna=False) > 1]


def is_full_factorial(trials: pd.DataFrame, factors: list[str]) -> int:
    """Seeds per grid point if every combination of the factors' values is present the same
    number of times (a balanced full factorial), else 0."""
    if not factors:
        return 0
    levels = math.prod(trials[f].nunique(dropna=False) for f in factors)
    counts = trials.groupby(factors, dropna=False).size()
    return int(counts.iloc[0]) if len(counts) == levels and counts.nunique() == 1 else 0


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"--importance-method must be one of {', '.join(METHODS)}, got {method!r}")


def importance(trials: pd.DataFrame, metric: str = "best_val_acc", method: str = "auto") -> Importance:
    """The importance of each varied config key for `metric` (see the module's docstring).
    `method` auto: anova for a full-factorial grid, else fanova."""
    check_method(method)
    if metric not in trials.columns or not pd.api.types.is_numeric_dtype(trials[metric]):
        raise UserError(f"--metric {metric!r} is not a numeric column of this run's trials")
    data = trials[trials[metric].notna()].reset_index(drop=True)
    factors = factors_of(data)
    if len(data) < 3 or not factors:
        raise UserError(f"importance needs at least 3 trials with {metric} and a config key that varies; this run "
                        f"has {len(data)} trial(s) and varies {', '.join(factors) or 'nothing'}")
    seeds = is_full_factorial(data, factors)
    chosen = method
    if method == "auto":
        method = "anova" if seeds else "fanova"
    stopped = int(data["stopped_early"].sum()) if "stopped_early" in data else 0
    if method == "anova":
        if not seeds:
            raise UserError("--importance-method anova needs a full-factorial grid (every combination of "
                            f"{', '.join(factors)} the same number of times); use fanova or ped-anova for this run")
        try:
            table = anova_table(data, factors, metric, seeds)
        except UserError:
            if chosen != "auto":
                raise
            method = "fanova"  # a grid with one trial per cell and too few cells to estimate anything
    if method != "anova":
        try:
            table = optuna_table(data, factors, metric, method)
        except Exception as e:  # the evaluators' own errors: too few distinct values, say
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{METHOD_NAMES[method].split(' (')[0]} could not rank this run's keys: {reason}") from None
    return Importance(method, metric, factors, table, len(data), stopped, seeds if method == "anova" else 1)


def _term(factor: str) -> str:
    return f"C(Q('{factor}'))"


def anova_table(data: pd.DataFrame, factors: list[str], metric: str, seeds: int) -> pd.DataFrame:
    """Main effects, lr:batch_size where both vary, then what is left (split into the other
    interactions and seed noise when there are replicates)."""
    sm = optional.load("statsmodels.api")
    ols = optional.load("statsmodels.formula.api").ols
    frame = data[factors].astype(str).assign(y=data[metric].astype(float))  # every factor categorical
    terms = [_term(f) for f in factors]
    interaction = ":".join(_term(f) for f in INTERACTION)
    if all(f in factors for f in INTERACTION):
        terms.append(interaction)
    fitted = ols("y ~ " + " + ".join(terms), data=frame).fit()
    folded = fitted.df_resid < 1 and interaction in terms
    if folded:  # one trial per cell of lr x batch size: the interaction is all that is left
        terms.remove(interaction)
        fitted = ols("y ~ " + " + ".join(terms), data=frame).fit()
    if fitted.df_resid < 1:
        raise UserError(f"an analysis of variance needs more trials than its terms have levels ({len(frame)} "
                        f"trials over {', '.join(factors)}); use fanova or ped-anova")
    table = sm.stats.anova_lm(fitted, typ=2)
    rows = [{"term": _name(term), "df": float(row["df"]), "sum_sq": float(row["sum_sq"]),
             "F": float(row["F"]), "p": float(row["PR(>F)"])} for term, row in table.iterrows() if term != "Residual"]
    residual = table.loc["Residual"]
    if seeds > 1:  # the model with every interaction leaves only seed-to-seed noise
        full = ols("y ~ " + " * ".join(_term(f) for f in factors), data=frame).fit()
        noise_ss, noise_df = float(full.ssr), float(full.df_resid)
        other_ss, other_df = float(residual["sum_sq"]) - noise_ss, float(residual["df"]) - noise_df
        if other_df > 0:
            rows.append({"term": "other interactions", "df": other_df, "sum_sq": other_ss,
                         "F": (other_ss / other_df) / (noise_ss / noise_df) if noise_ss > 0 else math.nan,
                         "p": math.nan})
        rows.append({"term": "seed-to-seed noise", "df": noise_df, "sum_sq": noise_ss, "F": math.nan, "p": math.nan})
    else:
        rows.append({"term": "residual (lr x batch_size and other interactions)" if folded else
                     "residual (other interactions)", "df": float(residual["df"]),
                     "sum_sq": float(residual["sum_sq"]), "F": math.nan, "p": math.nan})
    out = pd.DataFrame(rows)
    total = float(((frame["y"] - frame["y"].mean()) ** 2).sum())
    out["share"] = out["sum_sq"] / total if total > 0 else math.nan
    return out[["term", "df", "sum_sq", "share", "F", "p"]]


def _name(term: str) -> str:
    """C(Q('lr')):C(Q('batch_size')) -> lr x batch_size."""
    return " x ".join(part.split("'")[1] for part in term.split(":"))


def optuna_study(data: pd.DataFrame, factors: list[str], metric: str):
    """An in-memory Optuna study holding each trial as a finished one: its factors as params
    (log-scaled where a positive range spans a decade or more, categorical where not a number)."""
    optuna = optional.load("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {}
    for factor in factors:
        values = data[factor]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            distributions[factor] = optuna.distributions.CategoricalDistribution(
                sorted(values.astype(str).unique()))
            continue
        low, high = float(values.min()), float(values.max())
        log = low > 0 and high / low >= 10
        if pd.api.types.is_integer_dtype(values):
            distributions[factor] = optuna.distributions.IntDistribution(int(low), int(high), log=log)
        else:
            distributions[factor] = optuna.distributions.FloatDistribution(low, high, log=log)
    study = optuna.create_study(direction="maximize")
    trials = []
    for row in data.itertuples(index=False):
        row = row._asdict()
        params = {}
        for factor, distribution in distributions.items():
            value = row[factor]
            if isinstance(distribution, optuna.distributions.CategoricalDistribution):
                value = str(value)
            elif isinstance(distribution, optuna.distributions.IntDistribution):
                value = int(value)
            else:
                value = float(value)
            params[factor] = value
        trials.append(optuna.trial.create_trial(params=params, distributions=distributions,
                                                value=float(row[metric])))
    study.add_trials(trials)
    return study


def optuna_table(data: pd.DataFrame, factors: list[str], metric: str, method: str) -> pd.DataFrame:
    optuna = optional.load("optuna")
    study = optuna_study(data, factors, metric)
    if not queries.higher_is_better(metric):  # Optuna's evaluators read the study's direction
        study = optuna_study(data.assign(**{metric: -data[metric]}), factors, metric)
    evaluator = (optuna.importance.FanovaImportanceEvaluator(seed=0) if method == "fanova"
                 else optuna.importance.PedAnovaImportanceEvaluator())
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return pd.DataFrame({"term": list(found), "share": [float(v) for v in found.values()]})


def records(result: Importance) -> pd.DataFrame:
    """The machine-readable table (`tunefm summarize --section importance --format json`)."""
    table = result.table.copy()
    table.insert(0, "method", result.method)
    table["metric"] = result.metric
    table["trials"] = result.trials
    table["stopped_early"] = result.stopped_early
    return table
