"""ladder: seed 002 (`002_8766e111042e3d78.txt`, "Fashionable Learning"), its model ladder.

Logistic regression, fully connected nets with 1, 2 and 3 hidden layers, CNNs with 1,
2 and 3 conv layers and VGG16 (`logreg`, `ann1`..`ann3`, `convnet1`..`convnet3`,
`vgg16`; `tunefm models` shows their layers): 8 trials, with the seed's training
settings: 50 epochs, batch size 100, initial learning rate 0.001 decayed by 0.9999
per step (its best CNN setting).

Choices where the seed is silent: Adam (the seed's TensorFlow-era "adaptive learning
rate" course setting), cross-entropy, each model's own dropout and batch-norm defaults
(none, except VGG16's dropout 0.5). The seed's dropout and batch-norm experiments on
the one-layer CNN are one `--set` away, e.g.
    tunefm search --space ladder --set model=convnet1 --set dropout=0.0,0.3
(the seed's "dropout 0.7" is TensorFlow's keep probability, a dropout of 0.3 here).

Reported: test accuracy and loss per model. For the 1-layer CNN the seed gives 0.9243
in its overall comparison (with lr decay) and 0.9181 in its CNN-depth comparison; the
first is used here. Its logistic-regression test loss of 11.5 is as reported.
"""

from tunefm.study import Reported, Study

SEED_TEST = {  # model: (test acc, test loss)
    "logreg": (0.8092, 11.546),
    "ann1": (0.8960, 0.4950),
    "ann2": (0.8974, 0.7346),
    "ann3": (0.8928, 0.7644),
    "convnet1": (0.9243, 0.3481),
    "convnet2": (0.9209, 0.4740),
    "convnet3": (0.9208, 0.7275),
    "vgg16": (0.9265, 0.4840),
}

STUDY = Study(
    name="ladder",
    description="logistic regression, ANNs, CNNs with 1-3 layers and VGG16, Adam",
    grid={"model": list(SEED_TEST)},
    fixed={"optimizer": "adam", "lr": 0.001, "lr_decay": 0.9999, "batch_size": 100},
    max_epochs=50,
    source="002_8766e111042e3d78.txt",
    reported=[
        Reported(where={"model": model}, figures={"test_acc": acc, "test_loss": loss},
                 note="overall comparison, with lr decay" if model == "convnet1" else "", epochs=50)
        for model, (acc, loss) in SEED_TEST.items()
    ],
)
