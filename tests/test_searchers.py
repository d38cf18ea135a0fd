"""Searchers behind one interface (tunefm/searchers/): one suite that every registered
searcher passes, then what each one alone promises.

The proposals are drawn from the search algorithm each searcher gives Tune, driven the
way Tune drives it (configurations added, trials asked for, finished trials reported),
without a Ray cluster; test_studies_run.py runs each searcher through a real search.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from ray import tune
from ray.tune.experiment import Experiment
from ray.tune.search import SearchAlgorithm, SearchGenerator

from tunefm import searchers, study
from tunefm.cli import main
from tunefm.errors import UserError
from tunefm.searchers import distributions, vocabulary
from tunefm.stopping import objectives
from tunefm.study import Study

SPACE = {"lr": tune.loguniform(1e-3, 0.2), "momentum": tune.uniform(0.5, 0.95), "batch_size": tune.choice([16, 64])}
# A small valid study for each registered searcher: a new searcher adds its own here.
EXAMPLES = {
    "grid": dict(grid={"lr": [0.01, 0.1], "batch_size": [16, 64]}, fixed={"model": "iaro1", "momentum": 0.9}),
    "hyperopt": dict(space=SPACE, fixed={"model": "iaro1"}, num_samples=6, initial_points=2),
    "random": dict(space=SPACE, fixed={"model": "iaro1"}, num_samples=6),
    "optuna": dict(space=SPACE, fixed={"model": "iaro1"}, num_samples=6, initial_points=2),
}


def example(name: str, **changes) -> Study:
    return Study(name=f"{name}-example", description="", searcher=name, max_epochs=2,
                 **{**EXAMPLES[name], **changes})


def proposals(loaded: Study, seed: int = 0, concurrency: int | None = None, objectives=()) -> list[dict]:
    """Every config the searcher's algorithm proposes, in order; each trial finishes (val_acc
    from its lr, params from its batch size) when the algorithm waits for one to."""
    space, algorithm, num_samples = loaded.search.search_alg(loaded, seed, concurrency, None, objectives)
    assert num_samples == loaded.num_trials
    algorithm.set_search_properties(None, None, space)  # as Tune does before its first trial
    if not isinstance(algorithm, SearchAlgorithm):
        algorithm = SearchGenerator(algorithm)
    algorithm.add_configurations([Experiment("proposals", lambda config: None, config=space,
                                             num_samples=num_samples)])
    configs, running = [], []
    while not algorithm.is_finished() and len(configs) <= 10 * num_samples:
        trial = algorithm.next_trial()
        if trial is not None:
            configs.append(trial.config)
            running.append(trial)
        elif running:
            done = running.pop(0)
            algorithm.on_trial_complete(done.trial_id, {"val_acc": 1 - abs(done.config["lr"] - 0.05),
                                                        "params": 1000 * done.config["batch_size"],
                                                        "epoch": 1, "training_iteration": 1})
        else:
            break
    return configs


def inside(loaded: Study, config: dict) -> bool:
    """`config` is one the study can produce: fixed values kept, each varied key in range."""
    for key, value in loaded.fixed.items():
        if config[key] != value:
            return False
    for key, values in loaded.grid.items():
        if config[key] not in values:
            return False
    for key, domain in loaded.space.items():
        try:
            distributions.check_inside(key, domain, config[key])
        except UserError:
            return False
    return True


def test_every_registered_searcher_has_an_example_here():
    assert set(EXAMPLES) == set(searchers.names()) == set(searchers.REGISTRY)


@pytest.mark.parametrize("name", searchers.names())
def test_proposals_are_the_studys_trials_inside_its_space(name):
    loaded = example(name)
    configs = proposals(loaded)
    assert len(configs) == loaded.num_trials
    for config in configs:
        vocabulary.validate_config(config)
        assert inside(loaded, config), config
        assert set(config) == set(loaded.config_keys())


@pytest.mark.parametrize("name", searchers.names())
def test_the_same_seed_proposes_the_same_trials(name):
    loaded = example(name)
    assert proposals(loaded, seed=1) == proposals(loaded, seed=1)


@pytest.mark.parametrize("name", searchers.names())
def test_set_with_several_values_varies_the_key_over_exactly_those(name):
    loaded = example(name).with_overrides({"batch_size": [8, 32], "momentum": [0.5]})
    configs = proposals(loaded)
    assert {c["batch_size"] for c in configs} <= {8, 32} and len(configs) == loaded.num_trials
    assert {c["momentum"] for c in configs} == {0.5}
    if name == "grid":
        assert {c["batch_size"] for c in configs} == {8, 32}


@pytest.mark.parametrize("name, num_samples, trials", [("grid", 3, 12), ("hyperopt", 3, 3), ("random", 3, 3),
                                                            ("optuna", 3, 3)])
def test_num_samples_means_seeds_per_grid_point_or_configs_to_draw(name, num_samples, trials):
    loaded = example(name)
    with_options = loaded.search.with_run_options(loaded, {}, num_samples, seed=7)
    configs = proposals(with_options)
    assert len(configs) == with_options.num_trials == trials
    seeds = {c["seed"] for c in configs}
    assert seeds == ({7, 8, 9} if name == "grid" else {7})


@pytest.mark.parametrize("name", searchers.names())
def test_spaces_describes_a_study_of_every_searcher(name, tmp_path):
    source = {"grid": "grid={'lr': [0.01, 0.1]}, fixed={'model': 'iaro1', 'batch_size': 8}",
              "hyperopt": "space={'lr': tune.loguniform(1e-3, 0.1)}, fixed={'model': 'iaro1', 'batch_size': 8}, "
                          "num_samples=5",
              "random": "space={'lr': tune.loguniform(1e-3, 0.1)}, fixed={'model': 'iaro1', 'batch_size': 8}, "
                        "num_samples=5",
              "optuna": "space={'lr': tune.loguniform(1e-3, 0.1)}, fixed={'model': 'iaro1', 'batch_size': 8}, "
                        "num_samples=5, sampler='gp'"}[name]
    path = tmp_path / f"{name}_study.py"
    path.write_text(f"from ray import tune\nfrom tunefm.study import Study\n"
                    f"STUDY = Study(name='s', description='d', searcher={name!r}, {source})\n")
    shown = CliRunner().invoke(main, ["spaces", str(path)])
    assert shown.exit_code == 0, shown.output
    assert f"searcher: {name}; trials: {2 if name == 'grid' else 5}" in shown.output
    assert ("grid: 0.01, 0.1" if name == "grid" else "lr             loguniform(0.001, 0.1)") in shown.output
    listing = CliRunner().invoke(main, ["spaces"])
    assert f"  {name:<9} {searchers.get(name).summary}" in listing.output


def test_a_searcher_field_set_for_a_searcher_that_ignores_it_is_refused():
    with pytest.raises(UserError, match=r"^study 'random-example': initial_points need searcher='hyperopt' or "
                                        r"'optuna'$"):
        example("random", initial_points=3)
    with pytest.raises(UserError, match=r"^study 'grid-example': space, num_samples need searcher='hyperopt', "
                                        r"'random' or 'optuna'$"):
        example("grid", space={"seed": tune.choice([1, 2])}, num_samples=2)
    with pytest.raises(UserError, match=r"^study 'random-example': a random study searches `space`; put fixed "
                                        r"values in `fixed`, not grid or variants$"):
        example("random", grid={"seed": [1, 2]})
    with pytest.raises(UserError, match=r"^study 's': searcher must be one of grid, hyperopt, random, optuna, "
                                        r"got 'tpe'$"):
        Study(name="s", description="", searcher="tpe", fixed={"model": "iaro1", "lr": 0.1, "batch_size": 8})


def test_only_the_searchers_package_asks_which_searcher_a_study_has():
    """A new searcher touches its module, the registry and its tests: nothing else switches on the name."""
    package = Path(searchers.__file__).resolve().parent
    switches = []
    for module in package.parent.rglob("*.py"):
        if package in module.parents:
            continue
        for number, line in enumerate(module.read_text().splitlines(), 1):
            if re.search(r"searcher\s*(==|!=)|(==|!=)\s*['\"](grid|hyperopt|random|optuna)['\"]", line):
                switches.append(f"{module.name}:{number}: {line.strip()}")
    assert not switches


def test_random_search_draws_anew_with_another_seed_and_never_repeats():
    loaded = example("random", num_samples=10)
    first, second = proposals(loaded, seed=0), proposals(loaded, seed=1)
    assert len({c["lr"] for c in first}) == 10 and {c["lr"] for c in first}.isdisjoint(c["lr"] for c in second)
    assert {c["batch_size"] for c in first} == {16, 64}
    assert all(c["seed"] == 0 for c in first)  # one seed per trial: --seed


def test_random_search_tries_its_points_first_and_counts_them():
    point = {"lr": 0.05, "momentum": 0.9, "batch_size": 64}
    loaded = example("random", points_to_evaluate=[point])
    configs = proposals(loaded)
    assert len(configs) == 6 and {k: configs[0][k] for k in point} == point
    assert not any({k: c[k] for k in point} == point for c in configs[1:])


def test_random_search_runs_every_trial_at_once_unless_limited():
    loaded = example("random")
    assert loaded.search.search_alg(loaded, 0, None)[1].max_concurrent == 0
    assert loaded.search.search_alg(loaded, 0, 2)[1].max_concurrent == 2
    limited = example("random", concurrency=3)
    assert limited.search.search_alg(limited, 0, None)[1].max_concurrent == 3


def test_hyperopt_is_limited_and_suggests_the_seeds_choice_first():
    """TPE behind a ConcurrencyLimiter (4 at once by default), the seed's config first."""
    from ray.tune.search import ConcurrencyLimiter

    tpe = study.load("cnn2-tpe")
    param_space, algorithm, num_samples = tpe.search.search_alg(tpe, 0, None)
    assert isinstance(algorithm, ConcurrencyLimiter) and algorithm.max_concurrent == 4 and num_samples == 30
    assert tpe.search.search_alg(tpe, 0, 2)[1].max_concurrent == 2
    assert algorithm.set_search_properties(None, None, param_space)
    suggested = [algorithm.suggest(f"t{i}") for i in range(5)]
    first = suggested[0]
    assert (first["lr"], first["weight_decay"], first["batch_size"]) == (0.0003593, 0.0003593, 64)
    assert first["model"] == "cnn2" and first["augment"] is True and first["seed"] == 0
    assert all(s is not None for s in suggested[:4]) and suggested[4] is None  # 4 running: the fifth waits
    algorithm.on_trial_complete("t0", {"val_acc": 0.5, "training_iteration": 1})
    assert algorithm.suggest("t5") is not None  # a finished trial frees a slot


def test_grid_proposes_every_combination_in_a_seeded_shuffle():
    loaded = example("grid")
    configs = proposals(loaded, seed=0)
    assert sorted((c["lr"], c["batch_size"]) for c in configs) == [(0.01, 16), (0.01, 64), (0.1, 16), (0.1, 64)]
    orders = {tuple((c["lr"], c["batch_size"]) for c in proposals(loaded, seed=s)) for s in range(6)}
    assert len(orders) > 1  # the order depends on --seed


@pytest.mark.parametrize("sampler", ["tpe", "gp", "cmaes", "nsga2"])
def test_optuna_samplers_draw_inside_the_space_the_same_for_a_seed(sampler):
    """nsga2 on two objectives (it takes no fewer); the others on val_acc and, but cmaes, on two."""
    loaded = example("optuna", sampler=sampler, num_samples=5)  # 3 after the 2 random ones: gp fits each
    for named in (["val_acc:max"] if sampler != "nsga2" else []) + (["val_acc:max,params:min"]
                                                                   if sampler != "cmaes" else []):
        chosen = objectives.parse(named)
        configs = proposals(loaded, seed=3, objectives=chosen)
        assert len(configs) == 5 and all(inside(loaded, c) for c in configs)
        assert configs == proposals(loaded, seed=3, objectives=chosen)
        assert configs != proposals(loaded, seed=4, objectives=chosen)


def test_optuna_tells_each_trial_its_objectives_from_its_rows():
    """A trial column objective (time_per_epoch_s: the mean of the epochs reported) and a NaN
    one (a diverged trial: told as failed)."""
    loaded = example("optuna", num_samples=2)
    space, limiter, _ = loaded.search.search_alg(loaded, 0, None, None,
                                                 objectives.parse("val_acc:max,time_per_epoch_s:min"))
    limiter.set_search_properties(None, None, space)
    for trial_id, seconds, val in [("a", (1.0, 3.0, 5.0), 0.8), ("b", (1.0, 1.0), float("nan"))]:
        assert limiter.suggest(trial_id) is not None
        for epoch, s in enumerate(seconds[:-1], 1):
            limiter.on_trial_result(trial_id, {"epoch": epoch, "val_acc": val, "epoch_time_s": s,
                                               "training_iteration": epoch})
        # the result on which a scheduler stops the trial reaches the searcher only here, as in Tune
        limiter.on_trial_complete(trial_id, {"epoch": len(seconds), "val_acc": val, "epoch_time_s": seconds[-1],
                                             "training_iteration": len(seconds)})
    told = {t.number: t for t in limiter.searcher._ot_study.trials}
    assert told[0].values == [0.8, 3.0] and told[0].state.name == "COMPLETE"
    assert told[1].state.name == "FAIL"


@pytest.mark.parametrize("changes, named, message", [
    (dict(sampler="bayes"), None, "sampler must be one of tpe, gp, cmaes, nsga2, got 'bayes'"),
    (dict(sampler="cmaes", space={"lr": tune.loguniform(1e-3, 0.2), "batch_size": tune.choice([16, 64])}), None,
     "sampler='cmaes' needs at least two keys drawn from a range (tune.uniform, loguniform, randint, ...) in "
     "space, got lr; use tpe or gp"),
    (dict(sampler="nsga2"), "val_acc:max", "sampler='nsga2' optimizes several objectives, got one (val_acc:max)"),
    (dict(sampler="cmaes"), "val_acc:max,params:min", "sampler='cmaes' optimizes one objective, got 2"),
])
def test_optuna_refuses_what_its_sampler_cannot_do(changes, named, message):
    with pytest.raises(UserError, match=re.escape(message)):
        loaded = example("optuna", **changes)
        loaded.search.check_objectives(loaded, objectives.parse(named))


def test_optuna_tries_its_points_first():
    point = {"lr": 0.05, "momentum": 0.9, "batch_size": 64}
    for sampler in ("tpe", "cmaes"):
        configs = proposals(example("optuna", sampler=sampler, points_to_evaluate=[point]))
        assert len(configs) == 6 and {k: configs[0][k] for k in point} == point
