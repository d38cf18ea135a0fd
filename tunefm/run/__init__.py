"""The run folder's one owner: what a search writes and every later command reads.

    results/<run>/run.json                     RunRecord (record.py)
                 /trials/, epochs/ (or .parquet)  part files, the store and the writer
                 /confusion.parquet             the test evaluation's counts
                 /tune/<trial>/<checkpoint>/    state.pt + meta.json (checkpoints.py)

May import: pandas, pyarrow, numpy, the standard library, `tunefm.errors`, and the
torch-free `tunefm.engine.trial_config`. Never Ray, never torch.
"""
