"""Ray Tune distributions in a hyperopt study's `space`: checking and describing them.

A study writes its space with Ray Tune's own functions:

    space = {"lr": tune.loguniform(1e-5, 1e-2), "batch_size": tune.choice([32, 64, 128])}

Validation checks each distribution's reachable extremes (a float or integer range's
bounds, every category) with the same rules as grid values, so `lr` cannot reach 0
and `batch_size` cannot reach 0.5. Only Ray's float, integer and categorical
distributions are accepted: HyperOptSearch converts exactly those.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized, Uniform

from tunefm.errors import UserError

KINDS = "tune.uniform/loguniform/quniform/qloguniform, tune.randint/lograndint or tune.choice"


def domain_values(key: str, domain: Any) -> list[Any]:
    """The values to validate for `domain`: a range's bounds, or every category."""
    if isinstance(domain, Categorical):
        if not domain.categories:
            raise UserError(f"space[{key!r}] is an empty tune.choice")
        return list(domain.categories)
    if isinstance(domain, Integer):
        if domain.upper - 1 < domain.lower:
            raise UserError(f"space[{key!r}] is an empty integer range {domain.domain_str}")
        return [domain.lower, domain.upper - 1]  # randint's upper bound is exclusive
    if isinstance(domain, Float):
        if not domain.lower < domain.upper:
            raise UserError(f"space[{key!r}] needs lower < upper, got {domain.domain_str}")
        return [domain.lower, domain.upper]
    raise UserError(f"space[{key!r}] must be a Ray Tune distribution ({KINDS}), got {domain!r}")


def check_inside(key: str, domain: Any, value: Any) -> None:
    """A starting point's value must be one the distribution can produce."""
    if isinstance(domain, Categorical):
        ok = value in domain.categories
    elif isinstance(domain, (Integer, Float)):
        upper = domain.upper - 1 if isinstance(domain, Integer) else domain.upper
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and domain.lower <= value <= upper
    else:
        ok = False
    if not ok:
        raise UserError(f"point to evaluate {key}={value!r} is outside space[{key!r}] = {describe(domain)}")


def describe(domain: Any) -> str:
    """'loguniform(1e-05, 0.01)', 'choice([32, 64])', 'randint(1, 5)'."""
    if isinstance(domain, Categorical):
        return f"choice({list(domain.categories)})"
    kind = sampler_name(domain)
    if isinstance(domain, Integer):
        kind = {"uniform": "randint", "loguniform": "lograndint"}.get(kind, kind)
    return f"{kind}({domain.lower:g}, {domain.upper:g})"


def is_range(domain: Any) -> bool:
    """A float or integer range (not a list of categories)."""
    return isinstance(domain, (Float, Integer))


def sampler_name(domain) -> str:
    """A Ray Tune distribution's kind ('uniform', 'loguniform', 'qloguniform', ...), from the
    public sampler classes of `ray.tune.search.sample`."""
    sampler = domain.get_sampler()
    quantized = isinstance(sampler, Quantized)
    inner = sampler.sampler if quantized else sampler
    kind = "loguniform" if isinstance(inner, LogUniform) else "uniform" if isinstance(inner, Uniform) else \
        type(inner).__name__.lstrip("_").lower()
    return ("q" if quantized else "") + kind
