"""Searchers: how a study's trials are chosen, one module each behind one small interface.

    searcher = searchers.get("random")          # a UserError lists the valid names
    searcher.num_trials(study)                  # trials the search will run
    param_space, algorithm, num_samples = searcher.search_alg(study, seed=0, concurrency=None)

A study names its searcher (`Study(searcher="hyperopt", ...)`); everything that depends
on which one it is goes through the `Searcher` interface (`base.py`), so a new searcher
is a module here, a line in `REGISTRY`, and its tests:

    grid       every combination of `grid` values (times `variants`), in a seeded order
    hyperopt   Tree-structured Parzen Estimators (HyperOptSearch) drawing from `space`
    random     independent random draws from `space` (Ray Tune's BasicVariantGenerator)
    optuna     Optuna's samplers (tpe, gp, cmaes, nsga2) on one or several objectives
"""

from __future__ import annotations

from tunefm.errors import UserError
from tunefm.searchers.base import DrawingSearcher, Searcher
from tunefm.searchers.grid import GridSearcher
from tunefm.searchers.hyperopt import HyperoptSearcher
from tunefm.searchers.optuna_samplers import OptunaSearcher
from tunefm.searchers.random_search import RandomSearcher

REGISTRY: dict[str, Searcher] = {s.name: s for s in (GridSearcher(), HyperoptSearcher(), RandomSearcher(),
                                                       OptunaSearcher())}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Searcher:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise UserError(f"searcher must be one of {', '.join(REGISTRY)}, got {name!r}") from None


def taking(study_field: str) -> list[str]:
    """The searchers that read `study_field` (for the message when a study sets it in vain)."""
    return [name for name, searcher in REGISTRY.items() if study_field in searcher.fields]


__all__ = ["DrawingSearcher", "Searcher", "REGISTRY", "get", "names", "taking"]
