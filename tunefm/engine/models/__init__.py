"""Model registry: a name maps to a factory that builds an `nn.Module`.

Every model takes (N, 1, 28, 28) float images and returns (N, 10) logits.

    from tunefm.engine import models
    net = models.build("iaro2")
    net = models.build("twoconv", {"conv1_kernel": 5, "dense": 64})
    models.names()            # ['iaro1', 'iaro2', ...]
    models.get("cnn1").params # 4,048,010 (with default options)

A spec carries the model's family, its source seed, the GPU fraction a trial of it
asks for by default (small nets share one GPU), and its options: the model-specific
config keys (dropout, batch_norm, kernel sizes, ...) its factory accepts, each with a
default and a check. A key the model does not take is a `UserError` naming the keys
it does take.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from tunefm.engine.models import advertima, fashionable, iaro, kahn, twoconv
from tunefm.engine.models.spec import (  # noqa: F401
    INITS,
    ModelSpec,
    Option,
    batch_norm_option,
    count_params,
    dropout_option,
    init_weights,
    int_option,
)
from tunefm.errors import UserError

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}") from None


def build(name: str, options: Mapping[str, Any] | None = None) -> nn.Module:
    return get(name).build(options)


def option_keys() -> dict[str, list[str]]:
    """Every model-specific config key -> the models that take it."""
    keys: dict[str, list[str]] = {}
    for spec in _REGISTRY.values():
        for key in spec.options:
            keys.setdefault(key, []).append(spec.name)
    return keys


def _register_all() -> None:
    for family in (iaro, advertima, fashionable, kahn, twoconv):
        for spec in family.specs():
            register(spec)


_register_all()
