"""Optuna's samplers (Ray Tune's `OptunaSearch`): `num_samples` configs drawn from `space`,
one or several objectives, seeded by --seed.

    STUDY = Study(name="iaro-tpe", description="...", searcher="optuna", sampler="tpe", num_samples=40,
                  fixed={"model": "iaro2"},
                  space={"lr": tune.loguniform(1e-4, 0.1), "batch_size": tune.choice([32, 64, 128])})

    tpe     Tree-structured Parzen Estimators; several objectives: MOTPE
    gp      Gaussian-process Bayesian optimization (log expected improvement); several objectives too
    cmaes   CMA-ES over the numeric ranges of the space (two at least); one objective;
            tune.choice keys drawn at random beside it
    nsga2   NSGA-II, a genetic algorithm for several objectives (not one)

The objectives are --objectives (default val_acc:max): each trial tells Optuna its value of
each at its last epoch (an epoch column as reported; a trial column such as
time_per_epoch_s over its epochs so far), so a trial stopped early reports what it reached.
The first `initial_points` trials are random draws (tpe, gp, cmaes), or NSGA-II's first
generation; `points_to_evaluate` come first. Optuna learns from finished trials, so a few
run at once (`OPTUNA_CONCURRENCY`, or the study's `concurrency`, or --concurrency).
Optuna cannot prune a study of several objectives; here each trial still stops under
the search's rule (ASHA, or MO-ASHA with several objectives).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Sequence

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tunefm.errors import UserError
from tunefm.searchers import distributions
from tunefm.searchers.base import DrawingSearcher, Study
from tunefm.searchers.vocabulary import is_int
from tunefm.stopping import objectives as objective_columns

OPTUNA_CONCURRENCY = 4
LOCK_TYPE = type(threading.Lock())
SAMPLERS = ("tpe", "gp", "cmaes", "nsga2")
SAMPLER_SUMMARY = {"tpe": "TPE (MOTPE for several objectives)", "gp": "Gaussian-process Bayesian optimization",
                   "cmaes": "CMA-ES over the numeric ranges", "nsga2": "NSGA-II (several objectives)"}


def numeric_keys(study: "Study") -> list[str]:
    """The space's keys drawn from a range (what CMA-ES can move in), not from a list."""
    return [key for key, domain in study.space.items() if distributions.is_range(domain)]


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II whose lock is left out of a pickle and made anew on loading: Tune pickles the
    search algorithm with the experiment (and to resume it), and a lock cannot be pickled."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, LOCK_TYPE)} | {
            "_tunefm_locks": [k for k, v in self.__dict__.items() if isinstance(v, LOCK_TYPE)]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        locks = state.pop("_tunefm_locks", [])
        self.__dict__.update(state)
        for name in locks:
            setattr(self, name, threading.Lock())


def make_sampler(name: str, seed: int, initial_points: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=initial_points, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=initial_points, seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(n_startup_trials=initial_points, seed=seed,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                            warn_independent_sampling=False)
    return PicklableNSGAII(population_size=initial_points, seed=seed)


class ObjectiveOptunaSearch(OptunaSearch):
    """OptunaSearch told each trial's objectives as tunefm computes them: from the rows the
    trial reported, so a trial column (time_per_epoch_s) is an objective like an epoch one.
    A trial without a value for one (a diverged one: NaN) is told as failed."""

    def __init__(self, objectives: Sequence[objective_columns.Objective], **kwargs):
        super().__init__(metric=[o.column for o in objectives] if len(objectives) > 1 else objectives[0].column,
                         mode=[o.direction for o in objectives] if len(objectives) > 1 else objectives[0].direction,
                         **kwargs)
        self._objectives = tuple(objectives)
        self._histories = objective_columns.Histories()

    def _with_objectives(self, trial_id: str, result: dict) -> dict:
        history = self._histories.add(trial_id, result)
        values = objective_columns.values(self._objectives, history)
        return {**result, **{o.column: v for o, v in zip(self._objectives, values)}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if len(self._objectives) > 1:  # Optuna takes no intermediate values on several objectives
            self._histories.add(trial_id, result)
            return
        super().on_trial_result(trial_id, self._with_objectives(trial_id, result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # the result passes here even where Tune withheld it from on_trial_result (a trial the scheduler stopped)
        if result:
            result = self._with_objectives(trial_id, result)
            if any(math.isnan(float(result[o.column])) for o in self._objectives):
                result, error = None, True
        self._histories.drop(trial_id)
        super().on_trial_complete(trial_id, result, error)


class OptunaSearcher(DrawingSearcher):
    name = "optuna"
    summary = "Optuna's samplers (tpe, gp, cmaes, nsga2) on one or several objectives (--objectives)"
    fields = DrawingSearcher.fields | {"initial_points", "sampler"}
    reads_objectives = True

    def validate(self, study: "Study", where: str) -> None:
        super().validate(study, where)
        if study.sampler not in SAMPLERS:
            raise UserError(f"{where}: sampler must be one of {', '.join(SAMPLERS)}, got {study.sampler!r}")
        if not is_int(study.initial_points) or study.initial_points < (2 if study.sampler == "nsga2" else 1):
            raise UserError(f"{where}: initial_points must be an integer >= "
                            f"{2 if study.sampler == 'nsga2' else 1}, got {study.initial_points!r}")
        if study.sampler == "cmaes" and len(numeric_keys(study)) < 2:
            found = ", ".join(numeric_keys(study)) or "none"
            raise UserError(f"{where}: sampler='cmaes' needs at least two keys drawn from a range (tune.uniform, "
                            f"loguniform, randint, ...) in space, got {found}; use tpe or gp")

    def check_objectives(self, study: "Study", objectives: Sequence[objective_columns.Objective]) -> None:
        named = ", ".join(map(str, objectives))
        if study.sampler == "nsga2" and len(objectives) < 2:
            raise UserError(f"sampler='nsga2' optimizes several objectives, got one ({named}); give "
                            f"--objectives val_acc:max,time_per_epoch_s:min, or use tpe")
        if study.sampler == "cmaes" and len(objectives) > 1:
            raise UserError(f"sampler='cmaes' optimizes one objective, got {len(objectives)} ({named}); use tpe, "
                            f"gp or nsga2")

    def search_alg(self, study: "Study", seed: int, concurrency: int | None,
                   configs: list[dict[str, Any]] | None = None,
                   objectives: Sequence[Any] = ()) -> tuple[dict[str, Any], object, int]:
        objectives = tuple(objectives) or objective_columns.parse("val_acc:max")
        self.check_objectives(study, objectives)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created; tunefm reports progress
        algorithm = ObjectiveOptunaSearch(objectives, sampler=make_sampler(study.sampler, seed, study.initial_points),
                                          points_to_evaluate=[dict(p) for p in study.points_to_evaluate] or None)
        limit = concurrency or study.concurrency or OPTUNA_CONCURRENCY
        return ({**study.base_config(), **study.space}, ConcurrencyLimiter(algorithm, max_concurrent=limit),
                study.num_samples)

    def describe(self, study: "Study") -> list[str]:
        return super().describe(study) + [f"  sampler {study.sampler}: {SAMPLER_SUMMARY[study.sampler]}; "
                                          f"{study.initial_points} initial draws"]
