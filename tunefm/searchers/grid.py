"""Grid search: every combination of the study's `grid` values, crossed with each of its
`variants` (explicit partial configs, for comparisons that are not a product), each with
`fixed` added; `--num-samples N` runs each grid point with N seeds.

The trials start in a seeded random order (`trial_order`); where they train fused, the
Tune layer regroups them by shape (`placement.fused_order`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ray import tune
from ray.tune.search import BasicVariantGenerator

from tunefm.errors import UserError
from tunefm.searchers.base import Searcher, Study, _pairs
from tunefm.searchers.vocabulary import validate_value


def trial_order(configs: list[dict], seed: int) -> list[dict]:
    """The grid in a seeded random order.

    ASHA judges a trial against the trials that reached the same epoch before it. In
    grid order the first trials are one corner of the grid (the smallest learning
    rates, say), so early cutoffs are set by the worst configurations and almost
    nothing is stopped; a shuffled order gives every rung a representative sample.
    """
    order = random.Random(seed).sample(range(len(configs)), len(configs))
    return [configs[i] for i in order]


class GridSearcher(Searcher):
    name = "grid"
    summary = "every combination of grid values (times variants), in a seeded random order"
    fields = frozenset({"grid", "variants"})

    def validate(self, study: "Study", where: str) -> None:
        for key, values in study.grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
                raise UserError(f"{where}: grid[{key!r}] must be a non-empty list of values, got {values!r}")
            for value in values:
                validate_value(key, value)
        for variant in study.variants:
            if not isinstance(variant, Mapping) or not variant:
                raise UserError(f"{where}: each variant must be a non-empty dict of config values, got {variant!r}")
            for key, value in variant.items():
                validate_value(key, value)
            if set(variant) != set(study.variants[0]):
                raise UserError(f"{where}: every variant must set the same keys ({', '.join(study.variants[0])}), "
                                f"got {', '.join(variant)}")

    def num_trials(self, study: "Study") -> int:
        count = max(1, len(study.variants))
        for values in study.grid.values():
            count *= len(values)
        return count

    def configs(self, study: "Study") -> list[dict[str, Any]]:
        """Variants slowest, then grid keys (first key slowest)."""
        keys = list(study.grid)
        base = study.base_config()
        return [{**base, **variant, **dict(zip(keys, combo))}
                for variant in (study.variants or [{}])
                for combo in itertools.product(*(study.grid[k] for k in keys))]

    def configs_to_check(self, study: "Study") -> list[dict[str, Any]]:
        return self.configs(study)

    def vary(self, parts: dict[str, Any], key: str, values: list[Any]) -> None:
        parts["grid"][key] = list(values)

    def with_run_options(self, study: "Study", overrides: dict[str, list[Any]], num_samples: int | None,
                         seed: int) -> "Study":
        """--num-samples N: seeds seed, seed+1, ..., seed+N-1 per grid point. A study's own
        seeds stay unless --num-samples or --set seed=... replaces them."""
        num_samples = num_samples or 1
        if "seed" in overrides and num_samples > 1:
            raise UserError("give either --set seed=... or --num-samples, not both")
        study_seeds = "seed" in study.grid or "seed" in study.fixed or any("seed" in v for v in study.variants)
        if "seed" not in overrides and (not study_seeds or num_samples > 1):
            overrides["seed"] = [seed + i for i in range(num_samples)]
        return study.with_overrides(overrides)

    def search_alg(self, study: "Study", seed: int, concurrency: int | None,
                   configs: list[dict[str, Any]] | None = None,
                   objectives: Sequence[Any] = ()) -> tuple[dict[str, Any], object, int]:
        configs = configs if configs is not None else trial_order(self.configs(study), seed)
        base = study.base_config()
        # Each config pins every key, so each is exactly one trial, started in this order;
        # the space only declares each varied key's values.
        varied = {k: list(dict.fromkeys(c[k] for c in configs if k in c))
                  for k in {k for c in configs for k in c} - set(base)}
        param_space = {**base, **{k: tune.grid_search(v) for k, v in varied.items()}}
        # --concurrency goes here: Tune ignores `max_concurrent_trials` next to a search generator.
        return param_space, BasicVariantGenerator(points_to_evaluate=configs, max_concurrent=concurrency or 0), \
            len(configs)

    def describe(self, study: "Study") -> list[str]:
        lines = [f"  {key:<14} grid: {_values(values)}" for key, values in study.grid.items()]
        return lines + [f"  variant {i:<6} {_pairs(variant)}" for i, variant in enumerate(study.variants, 1)]


def _values(values) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
