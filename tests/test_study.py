"""Studies: loading bundled and user files, the grid, variants, hyperopt spaces, --set
overrides, validation."""

import re

import pytest
from conftest import REPO

from tunefm import study
from tunefm.errors import UserError
from tunefm.searchers import vocabulary

# The trial counts the seeds' grids give (cnn2-tpe: the configurations TPE draws).
TRIALS = {"fourfam": 112, "cnn5": 20, "cnn2-tpe": 30, "ladder": 8, "regularize": 2, "kernels": 72, "optim": 48}


def test_fourfam_is_the_seed_grid():
    fourfam = study.load("fourfam")
    assert fourfam.num_trials == 112 and len(fourfam.configs()) == 112
    assert fourfam.max_epochs == 100
    assert fourfam.grid["lr"] == [0.0005, 0.001, 0.005, 0.01]
    assert fourfam.grid["batch_size"] == [8, 16, 32, 64, 128, 256, 512]
    configs = fourfam.configs()
    assert {c["model"] for c in configs} == {"iaro1", "iaro2", "iaro3", "iaro4"}
    assert all(c["optimizer"] == "sgd" for c in configs)


def test_every_bundled_study_has_an_expected_count():
    assert sorted(study.available()) == sorted(TRIALS)


@pytest.mark.parametrize("name", study.available())
def test_every_bundled_study_expands_to_the_seeds_trial_count(name):
    loaded = study.load(name)
    assert loaded.num_trials == TRIALS[name]
    assert set(loaded.config_keys()) >= set(study.REQUIRED_KEYS)
    if loaded.searcher == "grid":
        configs = loaded.configs()
        assert len(configs) == TRIALS[name]
        assert len({tuple(sorted(c.items())) for c in configs}) == len(configs)  # all distinct
        for config in configs:
            vocabulary.validate_config(config)


@pytest.mark.parametrize("name", study.available())
def test_every_bundled_study_documents_its_seed_and_reports_its_figures(name):
    loaded = study.load(name)
    assert loaded.source and loaded.source in loaded.notes  # the module docstring names the seed file
    assert loaded.reported, "each study exposes what its seed reported"
    if loaded.searcher == "grid":
        configs = loaded.configs()
        for row in loaded.reported:  # every reported row is about trials the study runs
            assert any(all(c.get(k) == v for k, v in row.where.items()) for c in configs), row.where
            for key, value in row.chosen.items():
                assert any(c.get(key) == value for c in configs)
    if not loaded.source.startswith("004"):  # seed 004 gives no epochs: it trained to about 90% train accuracy
        assert all(row.epochs for row in loaded.reported), "where the seed states its epochs, they are recorded"


def test_cnn5_is_table_1():
    cnn5 = study.load("cnn5")
    assert {(c["model"], c["augment"], c["output"]) for c in cnn5.configs()} == {
        (m, a, o) for m in ("cnn1", "cnn2", "cnn3", "cnn4", "cnn5") for a in (False, True) for o in ("softmax", "sigmoid")}
    assert all(c["optimizer"] == "adam" and c["lr"] == 0.004 and c["weight_decay"] == 0.001 and c["batch_size"] == 128
               for c in cnn5.configs())
    assert cnn5.max_epochs == 10 and cnn5.test_top == 4  # all four configs of each model get a test accuracy
    assert len(cnn5.reported) == 20


def test_regularize_variants_differ_in_optimizer_dropout_and_epochs():
    baseline, better = study.load("regularize").configs()
    assert (baseline["optimizer"], baseline["lr"], baseline["dropout"], baseline["max_epochs"]) == ("sgd", 0.001, 0.0, 20)
    assert (better["optimizer"], better["lr"], better["dropout"], better["max_epochs"]) == ("adam", 0.0001, 0.5, 40)
    assert baseline["model"] == better["model"] == "kahn"


def test_seed_004_studies():
    kernels, optim = study.load("kernels"), study.load("optim")
    assert {c["init"] for c in kernels.configs()} == {"xavier_uniform"}
    assert {(c["conv1_kernel"], c["conv1_filters"], c["conv2_kernel"], c["conv2_filters"], c["dense"])
            for c in optim.configs()} == {(3, 8, 3, 8, 100)}
    assert {(c["lr"], c["momentum"]) for c in optim.configs()} == {(0.001, 0.9), (0.01, 0.9), (0.001, 0.5), (0.01, 0.5)}
    assert kernels.test_top == 72 and optim.test_top == 48  # the seed ranks every trial by test accuracy


def test_hyperopt_study_starts_from_the_seeds_choice():
    tpe = study.load("cnn2-tpe")
    assert tpe.searcher == "hyperopt" and tpe.num_samples == 30
    assert tpe.points_to_evaluate == [{"lr": 0.0003593, "weight_decay": 0.0003593, "batch_size": 64}]
    assert tpe.fixed["model"] == "cnn2" and tpe.fixed["augment"] is True
    with pytest.raises(ValueError, match="drawn during the search"):
        tpe.configs()


def test_set_on_a_hyperopt_study_pins_or_chooses():
    tpe = study.load("cnn2-tpe")
    pinned = tpe.with_overrides({"batch_size": [64]})
    assert "batch_size" not in pinned.space and pinned.fixed["batch_size"] == 64
    assert pinned.points_to_evaluate == [{"lr": 0.0003593, "weight_decay": 0.0003593}]
    chosen = tpe.with_overrides({"batch_size": [16, 512]})
    assert chosen.space["batch_size"].categories == [16, 512] and chosen.points_to_evaluate == []


def test_max_epochs_caps_per_trial_epochs():
    capped = study.load("regularize").with_max_epochs(3)
    assert capped.max_epochs == 3 and [c["max_epochs"] for c in capped.configs()] == [3, 3]
    with pytest.raises(UserError, match="max_epochs=40 in a config exceeds the study's max_epochs=30"):
        study.Study(name="x", description="", variants=[{"max_epochs": 40}],
                    fixed={"model": "kahn", "lr": 0.1, "batch_size": 8}, max_epochs=30)


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
    with pytest.raises(UserError, match="unknown study 'fivefam'; valid studies: cnn2-tpe, cnn5, fourfam, kernels"):
        study.load("fivefam")


def test_user_study_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from tunefm.study import Study\n"
                    "STUDY = Study(name='mine', description='d', grid={'lr': [0.1, 0.01]},"
                    " fixed={'model': 'iaro1', 'batch_size': 32}, max_epochs=2)\n")
    mine = study.load(str(path))
    assert mine.name == "mine" and mine.num_trials == 2
    assert mine.configs()[0] == {"model": "iaro1", "lr": 0.1, "batch_size": 32, "optimizer": "sgd",
                                 "momentum": 0.0, "weight_decay": 0.0, "init": "default", "augment": False,
                                 "output": "softmax", "lr_decay": 1.0, "seed": 0}


GRID = ("from tunefm.study import Study\n"
        "STUDY = Study(name='e', description='', grid={grid}, fixed={{'model': 'iaro1', 'lr': 0.1, 'batch_size': 8}})\n")


def tpe(space: str, fixed: str = "{'model': 'iaro1', 'batch_size': 8}", extra: str = "") -> str:
    return ("from ray import tune\nfrom tunefm.study import Study\n"
            f"STUDY = Study(name='t', description='', searcher='hyperopt', space={space}, num_samples=4, "
            f"fixed={fixed}{extra})\n")


@pytest.mark.parametrize("body,message", [
    ("STUDY = (", "has a syntax error at line 1"),
    ("X = 1\n", "must define STUDY = tunefm.study.Study(...)"),
    ("STUDY = 5\n", "must define STUDY = tunefm.study.Study(...), got int"),
    ("from tunefm.study import Study\nSTUDY = Study(name='e', description='', grid={})\n", "has an empty grid"),
    ("from tunefm.study import Study\nSTUDY = Study(name='e', description='', grid={'lr': []},"
     " fixed={'model': 'iaro1', 'batch_size': 8})\n", "grid['lr'] must be a non-empty list"),
    ("import nonexistent_module_xyz\n", "failed to load: ModuleNotFoundError"),
    (GRID.format(grid="{'model': ['resnet']}"), "unknown model 'resnet'; valid models: iaro1"),
    (GRID.format(grid="{'colour': ['red']}"), "unknown config key 'colour'; valid keys: model, lr"),
    (GRID.format(grid="{'lr': [0.1, 0]}"), "lr must be a number > 0, got lr=0"),
    (GRID.format(grid="{'batch_size': [0]}"), "batch_size must be an integer >= 1, got batch_size=0"),
    (GRID.format(grid="{'dropout': [0.5]}"), "model iaro1 does not take 'dropout'; it takes no options"),
    (GRID.format(grid="{'init': ['orthogonal']}"), "init must be one of 'default', 'xavier_uniform'"),
    (GRID.format(grid="{'lr_decay': [1.5]}"), "lr_decay must be a number in (0, 1], got lr_decay=1.5"),
    (tpe("{'lr': tune.uniform(0.0, 0.1)}"), "lr must be a number > 0, got lr=0.0"),
    (tpe("{'lr': [0.1, 0.2]}"), "space['lr'] must be a Ray Tune distribution"),
    (tpe("{'batch_size': tune.randint(0, 8)}", fixed="{'model': 'iaro1', 'lr': 0.1}"),
     "batch_size must be an integer >= 1, got batch_size=0"),
    (tpe("{'lr': tune.loguniform(1e-4, 1e-2)}", extra=", points_to_evaluate=[{'lr': 0.5}]"),
     "point to evaluate lr=0.5 is outside space['lr'] = loguniform(0.0001, 0.01)"),
    (tpe("{'lr': tune.loguniform(1e-4, 1e-2)}", extra=", grid={'seed': [0, 1]}"),
     "a hyperopt study searches `space`"),
    ("from tunefm.study import Study\nSTUDY = Study(name='e', description='', grid={'lr': [0.1]}, "
     "fixed={'model': 'iaro1', 'batch_size': 8}, num_samples=3)\n", "need searcher='hyperopt'"),
    ("from tunefm.study import Study, Reported\nSTUDY = Study(name='e', description='', grid={'lr': [0.1]}, "
     "fixed={'model': 'iaro1', 'batch_size': 8}, reported=[Reported(where={}, figures={'test_acc': 0.9}, "
     "epochs=0)])\n", "reported epochs must be an integer >= 1 (or None: not stated), got 0"),
])
def test_bad_study_files(tmp_path, body, message):
    """Each mistake in a study file is one line that names the file and the problem."""
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(UserError, match=re.escape(message)):
        study.load(str(path))


def test_missing_study_file(tmp_path):
    with pytest.raises(UserError, match="study file .*nope.py does not exist"):
        study.load(str(tmp_path / "nope.py"))


def test_the_reference_results_study_files_load_as_their_docstrings_run_them():
    """results/reference/*.py are run by the commands in their reference files."""
    files = sorted((REPO / "results" / "reference").glob("*.py"))
    assert files
    for path in files:
        loaded = study.load(str(path))
        assert f"--space results/reference/{path.name}" in loaded.notes
        assert loaded.num_trials >= 1 and loaded.reported
    longer = study.load(str(REPO / "results" / "reference" / "fourfam_longer.py"))
    assert [(c["model"], c["lr"], c["batch_size"], c["momentum"]) for c in longer.configs()] == [
        ("iaro2", 0.01, 16, 0.0), ("iaro2", 0.005, 8, 0.0)] and longer.max_epochs == 60
