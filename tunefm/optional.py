"""Heavy optional libraries, imported on first use, never at start-up.

    ols = optional.load("statsmodels.formula.api").ols

statsmodels, optuna, plotly, hyperopt and MLflow take seconds to import (MLflow is an extra:
`pip install "tunefm[mlflow]"`), and most commands need none of them: the modules that use
them import them through `load`, inside the function that needs them, so `tunefm summarize`
and every Ray worker start without them. A library that is not installed is one UserError
saying how to install it. Nothing else in tunefm imports inside a function to dodge a
cycle: the layers (`tests/test_layers.py`) forbid cycles outright.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tunefm.errors import UserError

# library -> (its name, how to install it) where that is not "pip install <library>"
INSTALL = {"mlflow": ("MLflow", 'pip install -e ".[mlflow]" (or pip install mlflow)')}


def load(module: str) -> ModuleType:
    """`module` imported (once per process: Python caches it); a UserError if its library is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        library = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != library:
            raise  # the library is there but something it needs is not: Python's own message says what
        name, how = INSTALL.get(library, (library, f"pip install {library}"))
        raise UserError(f"{name} is not installed; {how}") from None
