"""Random search: `num_samples` configs drawn independently from `space` (Ray Tune's
`BasicVariantGenerator`, seeded by --seed, so the same command draws the same configs);
`points_to_evaluate` are tried first and count toward `num_samples`.

    STUDY = Study(name="iaro2-random", description="...", searcher="random", num_samples=20,
                  fixed={"model": "iaro2"},
                  space={"lr": tune.loguniform(1e-3, 0.3), "batch_size": tune.choice([32, 64, 128])})

The baseline any adaptive searcher has to beat (Bergstra and Bengio, 2012). Nothing is
learned from finished trials, so every trial may run at once (unless --concurrency or
the study's `concurrency` says otherwise).
"""

from __future__ import annotations

from typing import Any, Sequence

from ray.tune.search import BasicVariantGenerator

from tunefm.searchers.base import DrawingSearcher, Study


class RandomSearcher(DrawingSearcher):
    name = "random"
    summary = "random search: independent draws from the space, seeded by --seed"

    def search_alg(self, study: "Study", seed: int, concurrency: int | None,
                   configs: list[dict[str, Any]] | None = None,
                   objectives: Sequence[Any] = ()) -> tuple[dict[str, Any], object, int]:
        algorithm = BasicVariantGenerator(points_to_evaluate=[dict(p) for p in study.points_to_evaluate] or None,
                                          max_concurrent=concurrency or study.concurrency or 0, random_state=seed)
        return {**study.base_config(), **study.space}, algorithm, study.num_samples
