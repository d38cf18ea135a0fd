"""Early-stopping rules as plain Python, shared by the search and by `tunefm replay`.

    rule = rules.make("mo-asha", objectives.parse("val_acc:max,time_per_epoch_s:min"),
                      max_epochs=9, grace_period=1, reduction_factor=3)
    rule.on_epoch(trial_id, history)   # CONTINUE, STOP (judged at a rung) or END (its last epoch)

    objectives.py   what a rule judges: `--objectives val_acc:max,params:min`
    pareto.py       non-dominated sorting, crowding distance, hypervolume
    rules.py        ASHA (Ray Tune's rule, mirrored exactly) and MO-ASHA, rung by rung

The Tune layer wraps a rule in a scheduler (tunefm/tune/stopping.py); analysis/replay.py
runs one over a run's recorded curves. Neither Ray nor torch is imported here.
"""
