"""Hyperopt's Tree-structured Parzen Estimators (Ray Tune's `HyperOptSearch`): `num_samples`
configs drawn from `space`, the first `initial_points` at random, the rest where finished
trials did well; `points_to_evaluate` (a seed's own choice, say) are tried first.

TPE learns from finished trials, so it runs a few at once (`HYPEROPT_CONCURRENCY`,
or the study's `concurrency`, or --concurrency): all at once would make it random search.
"""

from __future__ import annotations

from typing import Any, Sequence

from ray.tune.search import ConcurrencyLimiter

from tunefm import optional
from tunefm.errors import UserError
from tunefm.searchers.base import DrawingSearcher, Study
from tunefm.searchers.vocabulary import is_int

HYPEROPT_CONCURRENCY = 4  # default trials at once


class HyperoptSearcher(DrawingSearcher):
    name = "hyperopt"
    summary = "TPE (hyperopt): random first draws, then configs near those that did well"
    fields = DrawingSearcher.fields | {"initial_points"}

    def validate(self, study: "Study", where: str) -> None:
        super().validate(study, where)
        if not is_int(study.initial_points) or study.initial_points < 1:
            raise UserError(f"{where}: initial_points must be an integer >= 1, got {study.initial_points!r}")

    def search_alg(self, study: "Study", seed: int, concurrency: int | None,
                   configs: list[dict[str, Any]] | None = None,
                   objectives: Sequence[Any] = ()) -> tuple[dict[str, Any], object, int]:
        # hyperopt imports scipy.stats (about a second of every start-up): only its studies pay for it
        search_class = optional.load("ray.tune.search.hyperopt").HyperOptSearch
        algorithm = search_class(metric="val_acc", mode="max", n_initial_points=study.initial_points,
                                 points_to_evaluate=[dict(p) for p in study.points_to_evaluate] or None,
                                 random_state_seed=seed)
        limit = concurrency or study.concurrency or HYPEROPT_CONCURRENCY
        return ({**study.base_config(), **study.space}, ConcurrencyLimiter(algorithm, max_concurrent=limit),
                study.num_samples)

    def describe(self, study: "Study") -> list[str]:
        return super().describe(study) + [f"  {study.initial_points} random draws before TPE takes over"]
