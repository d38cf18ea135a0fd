"""fourfam's two iaro2 picks trained twice as long: does a longer budget close the gap to seed 000?

The 30-epoch ASHA run (results/reference/fourfam.md) picked lr 0.01, batch 16 by
validation accuracy; seed 000 picked lr 0.005, batch 8 after 100 epochs. Both are
trained here for 60 epochs without early stopping, with fourfam's own settings (plain
SGD, no momentum or weight decay), and both are evaluated on the test set from their
best-validation checkpoints:

    tunefm search --space results/reference/fourfam_longer.py --no-early-stop --name fourfam-iaro2-60ep
"""

from search_spaces.fourfam import STUDY as FOURFAM
from tunefm.study import Study

STUDY = Study(
    name="fourfam-longer",
    description="iaro2: this run's pick and the seed's, 60 epochs",
    variants=[{"lr": 0.01, "batch_size": 16}, {"lr": 0.005, "batch_size": 8}],
    fixed={**FOURFAM.fixed, "model": "iaro2"},
    max_epochs=60,
    source=FOURFAM.source,
    reported=[row for row in FOURFAM.reported if row.where == {"model": "iaro2"}],
)
