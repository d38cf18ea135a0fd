"""Every registered model: forward and backward pass, parameter count against its source seed,
options, weight init."""

import math

import pytest
import torch
from torch import nn

from tunefm.engine import models
from tunefm.errors import UserError

# name -> (expected parameters, allowed relative difference). Exact where the seed states
# a count; "about" counts (CNN_4 ~65,000, CNN_5 ~1.8 million) within the seed's rounding;
# where the seed gives no count, the count of the architecture tunefm documents.
EXPECTED_PARAMS = {
    "iaro1": (21_352, 0), "iaro2": (885_470, 0), "iaro3": (2_114_490, 0), "iaro4": (2_273_170, 0),
    "cnn1": (240_256 + 3_807_754, 0), "cnn2": (240_256 + 3_807_754 + 704, 0),
    "cnn3": (240_256 + 3_807_754 + 704, 0), "cnn4": (65_000, 0.02), "cnn5": (1_800_000, 0.03),
    "logreg": (7_850, 0), "ann1": (203_530, 0), "ann2": (269_322, 0), "ann3": (335_114, 0),
    "convnet1": (6_434_634, 0), "convnet2": (3_274_634, 0), "convnet3": (1_447_946, 0),
    "vgg16": (15_243_978, 0), "kahn": (87_818, 0), "twoconv": (925_190, 0),
}
SEEDS = {"iaro": "000", "cnn": "001", "logreg": "002", "ann": "002", "convnet": "002", "vgg": "002",
         "kahn": "003", "twoconv": "004"}


def _count(model: nn.Module, kind) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, kind) for p in m.parameters(recurse=False))


def test_every_registered_model_has_an_expected_count():
    assert sorted(models.names()) == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", models.names())
def test_forward_and_backward_on_a_batch(name):
    torch.manual_seed(0)
    net = models.build(name)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 7, 9])
    logits = net(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("name", models.names())
def test_parameter_count_matches_seed(name):
    expected, tolerance = EXPECTED_PARAMS[name]
    counted = models.count_params(models.build(name))
    assert counted == models.get(name).params
    assert abs(counted - expected) <= tolerance * expected


@pytest.mark.parametrize("name", models.names())
def test_source_seed_is_named(name):
    prefix = next(p for p in SEEDS if name.startswith(p))
    assert models.get(name).source.startswith(SEEDS[prefix] + "_")


def test_cnn1_has_the_seeds_conv_and_fc_counts():
    net = models.build("cnn1")
    assert _count(net, nn.Conv2d) == 240_256
    assert _count(net, nn.Linear) == 3_807_754
    assert net.classifier[1].in_features == 3200  # 128 x 5 x 5 after the second pool


def test_cnn2_adds_batch_norm_and_cnn3_dropout():
    cnn1, cnn2, cnn3 = (models.build(n) for n in ("cnn1", "cnn2", "cnn3"))
    assert _count(cnn1, nn.BatchNorm2d) == 0 and _count(cnn2, nn.BatchNorm2d) == 704
    assert not any(isinstance(m, nn.Dropout) for m in cnn2.modules())
    assert [m.p for m in cnn3.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert [m.p for m in models.build("cnn3", {"dropout": 0.2}).modules() if isinstance(m, nn.Dropout)] == [0.2, 0.2]


@pytest.mark.parametrize("name,convs,pools,linears", [
    ("iaro1", 1, 1, 2), ("iaro2", 1, 1, 3), ("iaro3", 2, 1, 3), ("iaro4", 2, 2, 3),
    ("cnn4", 3, 3, 1), ("cnn5", 5, 2, 2), ("convnet3", 3, 3, 2), ("vgg16", 13, 5, 3), ("kahn", 2, 2, 3),
    ("twoconv", 2, 0, 2), ("logreg", 0, 0, 1), ("ann3", 0, 0, 4),
])
def test_layer_structure(name, convs, pools, linears):
    layers = list(models.build(name).modules())
    assert sum(isinstance(m, nn.Conv2d) for m in layers) == convs
    assert sum(isinstance(m, nn.MaxPool2d) for m in layers) == pools
    assert sum(isinstance(m, nn.Linear) for m in layers) == linears


def test_model_options_change_the_network():
    small = models.build("twoconv", {"conv1_kernel": 3, "conv1_filters": 8, "conv2_kernel": 3,
                                     "conv2_filters": 8, "dense": 100})
    assert models.count_params(small) == 462_574  # the net seed 004 chose for experiment 2
    wide = models.build("twoconv", {"conv1_kernel": 5, "conv2_kernel": 5, "conv2_filters": 32})
    assert wide(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with_bn = models.build("convnet2", {"batch_norm": True, "dropout": 0.3})
    assert _count(with_bn, nn.BatchNorm2d) == 2 * (32 + 64)
    assert [m.p for m in with_bn.modules() if isinstance(m, nn.Dropout)] == [0.3]


@pytest.mark.parametrize("name,options,message", [
    ("iaro1", {"dropout": 0.5}, "model iaro1 does not take 'dropout'; it takes no options"),
    ("kahn", {"batch_norm": True}, "model kahn does not take 'batch_norm'; its options: dropout"),
    ("twoconv", {"conv1_kernel": 4}, "conv1_kernel must be an odd integer >= 1 for model twoconv, got conv1_kernel=4"),
    ("cnn3", {"dropout": 1.0}, "dropout must be a number in [0, 1) for model cnn3, got dropout=1.0"),
    ("convnet1", {"batch_norm": "yes"}, "batch_norm must be true or false for model convnet1, got batch_norm='yes'"),
    ("twoconv", {"conv1_kernel": 15, "conv2_kernel": 15},
     "model twoconv: conv1_kernel + conv2_kernel must be <= 29 (two unpadded convolutions of a 28x28 image), got 15 + 15 = 30"),
])
def test_bad_options_are_user_errors(name, options, message):
    with pytest.raises(UserError) as caught:
        models.build(name, options)
    assert str(caught.value) == message


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="unknown model 'resnet'; valid models: iaro1, iaro2, iaro3, iaro4, cnn1"):
        models.get("resnet")


@pytest.mark.parametrize("scheme", ["xavier_uniform", "xavier_normal", "kaiming_uniform"])
def test_init_schemes_set_weight_scale_and_zero_biases(scheme):
    torch.manual_seed(0)
    net = models.init_weights(models.build("twoconv"), scheme)
    dense = net[5]  # FC 9216 -> 100
    fan_in, fan_out = dense.in_features, dense.out_features
    expected_std = {"xavier_uniform": math.sqrt(2 / (fan_in + fan_out)),
                    "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
                    "kaiming_uniform": math.sqrt(2 / fan_in)}[scheme]
    assert dense.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_default_init_keeps_pytorch_weights():
    torch.manual_seed(0)
    built = models.build("kahn")
    torch.manual_seed(0)
    kept = models.init_weights(models.build("kahn"), "default")
    assert all(torch.equal(a, b) for a, b in zip(built.parameters(), kept.parameters()))
    assert any((m.bias != 0).any() for m in kept.modules() if isinstance(m, nn.Linear))
