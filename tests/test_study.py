"""Studies: loading bundled and user files, the grid, --set overrides, validation."""

import re

import pytest

from tunefm import study
from tunefm.errors import UserError


def test_fourfam_is_the_seed_grid():
    fourfam = study.load("fourfam")
    assert fourfam.num_trials == 112 and len(fourfam.configs()) == 112
    assert fourfam.max_epochs == 100
    assert fourfam.grid["lr"] == [0.0005, 0.001, 0.005, 0.01]
    assert fourfam.grid["batch_size"] == [8, 16, 32, 64, 128, 256, 512]
    configs = fourfam.configs()
    assert {c["model"] for c in configs} == {"iaro1", "iaro2", "iaro3", "iaro4"}
    assert all(c["optimizer"] == "sgd" for c in configs)


@pytest.mark.parametrize("name", study.available())
def test_every_bundled_study_loads_and_is_valid(name):
    loaded = study.load(name)
    assert loaded.num_trials >= 1
    assert set(loaded.config_keys()) >= set(study.REQUIRED_KEYS)


def test_set_pins_and_grids():
    overrides = study.parse_sets(["model=iaro1", "lr=0.01"])
    narrowed = study.load("fourfam").with_overrides(overrides)
    assert narrowed.num_trials == 7
    assert narrowed.fixed["model"] == "iaro1" and "model" not in narrowed.grid
    widened = study.load("fourfam").with_overrides(study.parse_sets(["lr=0.1,0.2", "momentum=0.9"]))
    assert widened.grid["lr"] == [0.1, 0.2] and widened.num_trials == 4 * 2 * 7


@pytest.mark.parametrize("text,expected", [
    ("lr=0.01", ("lr", [0.01])),
    ("lr=1e-3,0.1", ("lr", [0.001, 0.1])),
    ("model=iaro1,iaro2", ("model", ["iaro1", "iaro2"])),
    ("optimizer='adam'", ("optimizer", ["adam"])),
    ("batch_size=8, 16", ("batch_size", [8, 16])),
])
def test_parse_set(text, expected):
    assert study.parse_set(text) == expected


@pytest.mark.parametrize("sets,message", [
    (["colour=red"], "unknown config key 'colour' in --set; valid keys: model, lr, batch_size"),
    (["model=resnet"], "unknown model 'resnet'; valid models: iaro1"),
    (["optimizer=rmsprop"], "optimizer must be 'sgd' or 'adam', got optimizer='rmsprop'"),
    (["lr=0"], "lr must be a number > 0, got lr=0"),
    (["lr=-0.1,0.1"], "lr must be a number > 0, got lr=-0.1"),
    (["batch_size=0"], "batch_size must be an integer >= 1, got batch_size=0"),
    (["batch_size=8.5"], "batch_size must be an integer >= 1, got batch_size=8.5"),
    (["lr"], "--set takes KEY=V1[,V2...], got 'lr'"),
    (["lr=0.1", "lr=0.2"], "--set lr is given twice"),
])
def test_bad_set_is_a_user_error(sets, message):
    with pytest.raises(UserError, match=re.escape(message)):
        study.load("fourfam").with_overrides(study.parse_sets(sets))


def test_unknown_study_lists_valid_ones():
    with pytest.raises(UserError, match="unknown study 'fivefam'; valid studies: fourfam"):
        study.load("fivefam")


def test_user_study_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from tunefm.study import Study\n"
                    "STUDY = Study(name='mine', description='d', grid={'lr': [0.1, 0.01]},"
                    " fixed={'model': 'iaro1', 'batch_size': 32}, max_epochs=2)\n")
    mine = study.load(str(path))
    assert mine.name == "mine" and mine.num_trials == 2
    assert mine.configs()[0] == {"model": "iaro1", "lr": 0.1, "batch_size": 32, "optimizer": "sgd",
                                 "momentum": 0.0, "weight_decay": 0.0, "seed": 0}


@pytest.mark.parametrize("body,message", [
    ("STUDY = (", "has a syntax error at line 1"),
    ("X = 1\n", "must define STUDY = tunefm.study.Study(...)"),
    ("STUDY = 5\n", "must define STUDY = tunefm.study.Study(...), got int"),
    ("from tunefm.study import Study\nSTUDY = Study(name='e', description='', grid={})\n", "has an empty grid"),
    ("from tunefm.study import Study\nSTUDY = Study(name='e', description='', grid={'lr': []},"
     " fixed={'model': 'iaro1', 'batch_size': 8})\n", "grid['lr'] must be a non-empty list"),
    ("import nonexistent_module_xyz\n", "failed to load: ModuleNotFoundError"),
])
def test_bad_study_files(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(UserError, match=re.escape(message)):
        study.load(str(path))


def test_missing_study_file(tmp_path):
    with pytest.raises(UserError, match="study file .*nope.py does not exist"):
        study.load(str(tmp_path / "nope.py"))
