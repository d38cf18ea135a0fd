"""Model registry: a name maps to a factory that builds an `nn.Module`.

Every model takes (N, 1, 28, 28) float images and returns (N, 10) logits.

    from tunefm import models
    net = models.build("iaro2")
    models.names()            # ['iaro1', 'iaro2', ...]
    models.get("iaro1").params

A spec also carries the model's family, its source seed, and the GPU fraction a
trial of it asks for by default (small nets share one GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from torch import nn

from tunefm.errors import UserError
from tunefm.models import iaro


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    source: str  # the seed file it comes from
    gpu_fraction: float  # default share of one GPU for a trial of this model
    factory: Callable[[], nn.Module]

    @cached_property
    def params(self) -> int:
        return count_params(self.factory())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


def build(name: str) -> nn.Module:
    return get(name).factory()


for _name, _gpu in [("iaro1", 0.25), ("iaro2", 0.25), ("iaro3", 0.5), ("iaro4", 0.5)]:
    register(
        ModelSpec(
            name=_name,
            family="IaroHasNoFashionNet",
            source="000_3b33fd455f65cb7c.txt",
            gpu_fraction=_gpu,
            factory=iaro.make_factory(_name),
        )
    )
