"""The interface every searcher implements, and the shared part of the searchers that draw
configs from a `space` of Ray Tune distributions (hyperopt, random).

A searcher holds no state: each method takes the `Study` it works on. A study's `space`
is written with Ray Tune's distributions, and `search_alg` hands Tune its search algorithm;
how the trials are then placed and trained is the Tune layer's (`tunefm/tune/`).
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import replace
from typing import Any, Mapping, Protocol, Sequence

from ray import tune

from tunefm.errors import UserError
from tunefm.searchers import distributions
from tunefm.searchers.vocabulary import is_int, validate_value


class Study(Protocol):
    """What a searcher reads of a `tunefm.study.Study`: named here, so that the searchers, which
    the study module registers, do not import it back."""

    grid: Mapping[str, Sequence[Any]]
    variants: Sequence[Mapping[str, Any]]
    fixed: Mapping[str, Any]
    space: Mapping[str, Any]
    num_samples: int
    points_to_evaluate: Sequence[Mapping[str, Any]]
    initial_points: int
    sampler: str
    concurrency: int | None

    def base_config(self) -> dict[str, Any]: ...

    def with_overrides(self, overrides: dict[str, list[Any]]) -> "Study": ...

# The Study fields that belong to some searcher; `Study.validate` refuses one set for a
# searcher that does not read it (every searcher reads `fixed`).
SEARCHER_FIELDS = ("grid", "variants", "space", "num_samples", "points_to_evaluate", "initial_points", "sampler")


class Searcher(abc.ABC):
    """How a study's trials are chosen."""

    name: str  # what a study file writes: Study(searcher=name)
    summary: str  # one line for `tunefm spaces`
    fields: frozenset[str]  # the SEARCHER_FIELDS it reads
    reads_objectives: bool = False  # optimizes --objectives (else val_acc, or nothing)

    @abc.abstractmethod
    def validate(self, study: "Study", where: str) -> None:
        """Check the study's searcher fields; a UserError starting with `where` names what is wrong."""

    @abc.abstractmethod
    def num_trials(self, study: "Study") -> int:
        """Trials the search runs."""

    def configs(self, study: "Study") -> list[dict[str, Any]] | None:
        """Every trial's config in order, where it is known before the search (None: drawn as it goes)."""
        return None

    @abc.abstractmethod
    def configs_to_check(self, study: "Study") -> list[dict[str, Any]]:
        """Configs covering every combination of model and model option the search can reach."""

    @abc.abstractmethod
    def vary(self, parts: dict[str, Any], key: str, values: list[Any]) -> None:
        """`--set key=V1,V2,...`: make `key` take exactly `values` in the study's parts (grid,
        fixed, space, variants, points_to_evaluate; `key` already removed from each)."""

    @abc.abstractmethod
    def with_run_options(self, study: "Study", overrides: dict[str, list[Any]], num_samples: int | None,
                         seed: int) -> "Study":
        """The study with `--set` (`overrides`), `--num-samples` and `--seed` applied."""

    @abc.abstractmethod
    def search_alg(self, study: "Study", seed: int, concurrency: int | None,
                   configs: list[dict[str, Any]] | None = None,
                   objectives: Sequence[Any] = ()) -> tuple[dict[str, Any], object, int]:
        """(param_space, Ray Tune search algorithm, num_samples) for `tune.Tuner`. `configs`:
        every trial's config (`configs()`) in the order to start them, where the Tune layer
        orders them itself (by shape, for a fused search); None: the searcher's own order.
        `objectives`: --objectives (`tunefm.stopping.objectives.Objective`s), for a searcher
        that `reads_objectives`."""

    def check_objectives(self, study: "Study", objectives: Sequence[Any]) -> None:
        """--objectives fit this searcher (a UserError where they cannot); checked before Ray starts."""

    @abc.abstractmethod
    def describe(self, study: "Study") -> list[str]:
        """The search as lines for `tunefm spaces NAME`."""


class DrawingSearcher(Searcher):
    """Draws `num_samples` configs from `space` ({key: a Ray Tune distribution}), trying
    `points_to_evaluate` first; every trial uses --seed."""

    fields = frozenset({"space", "num_samples", "points_to_evaluate"})

    def validate(self, study: "Study", where: str) -> None:
        if study.grid or study.variants:
            raise UserError(f"{where}: a {self.name} study searches `space`; put fixed values in `fixed`, not grid "
                            f"or variants")
        if not study.space:
            raise UserError(f"{where}: searcher={self.name!r} needs a non-empty space")
        for key, domain in study.space.items():
            for value in distributions.domain_values(key, domain):
                validate_value(key, value)
        if not is_int(study.num_samples) or study.num_samples < 1:
            raise UserError(f"{where}: a {self.name} study needs num_samples >= 1, got {study.num_samples!r}")
        for point in study.points_to_evaluate:
            if set(point) != set(study.space):
                raise UserError(f"{where}: each point to evaluate must set exactly the space's keys "
                                f"({', '.join(study.space)}), got {', '.join(point) or 'none'}")
            for key, value in point.items():
                distributions.check_inside(key, study.space[key], value)

    def num_trials(self, study: "Study") -> int:
        return study.num_samples

    def configs_to_check(self, study: "Study") -> list[dict[str, Any]]:
        base = study.base_config()
        options = {k: distributions.domain_values(k, d) for k, d in study.space.items()}
        return [{**base, **dict(zip(options, combo))} for combo in itertools.product(*options.values())]

    def vary(self, parts: dict[str, Any], key: str, values: list[Any]) -> None:
        parts["space"][key] = tune.choice(list(values))
        parts["points_to_evaluate"] = []  # the seed's starting points no longer fit the space

    def with_run_options(self, study: "Study", overrides: dict[str, list[Any]], num_samples: int | None,
                         seed: int) -> "Study":
        overrides.setdefault("seed", [seed])
        study = study.with_overrides(overrides)
        return replace(study, num_samples=num_samples) if num_samples is not None else study

    def describe(self, study: "Study") -> list[str]:
        lines = [f"  {key:<14} {distributions.describe(domain)}" for key, domain in study.space.items()]
        lines += [f"  first point    {_pairs(point)}" for point in study.points_to_evaluate]
        return lines + [f"  {study.num_samples} configs drawn; " + self.summary]


def _pairs(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())
