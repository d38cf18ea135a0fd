"""Every registered model: output shape, parameter count against its source seed."""

import pytest
import torch

from tunefm import models
from tunefm.errors import UserError

# Parameter counts the seeds report; every registered model must appear here.
SEED_PARAMS = {"iaro1": 21_352, "iaro2": 885_470, "iaro3": 2_114_490, "iaro4": 2_273_170}


def test_every_registered_model_has_a_reference_count():
    assert sorted(models.names()) == sorted(SEED_PARAMS)


@pytest.mark.parametrize("name", models.names())
def test_output_shape(name):
    net = models.build(name)
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", models.names())
def test_parameter_count_matches_seed(name):
    counted = models.count_params(models.build(name))
    assert counted == models.get(name).params
    assert abs(counted - SEED_PARAMS[name]) <= 0.01 * SEED_PARAMS[name]


@pytest.mark.parametrize("name,convs,pools,linears", [
    ("iaro1", 1, 1, 2), ("iaro2", 1, 1, 3), ("iaro3", 2, 1, 3), ("iaro4", 2, 2, 3),
])
def test_layer_structure_matches_seed_table(name, convs, pools, linears):
    layers = list(models.build(name).modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in layers) == convs
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in layers) == pools
    assert sum(isinstance(m, torch.nn.Linear) for m in layers) == linears


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="unknown model 'resnet'; valid models: iaro1, iaro2, iaro3, iaro4"):
        models.get("resnet")
