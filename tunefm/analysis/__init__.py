"""Answers from a finished (or running) run folder: queries over its tables, importance,
summaries and text tables, the report's figures, the MLflow export.

May import: pandas, numpy, matplotlib, the standard library, `tunefm.run`, the torch-free
`tunefm.engine.data` and `tunefm.engine.trial_config`, and heavy optional libraries
(plotly, optuna, statsmodels, mlflow) through `tunefm.optional`. Never Ray, never torch.
"""
