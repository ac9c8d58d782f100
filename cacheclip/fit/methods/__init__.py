"""Few-shot methods on cached features, one module each; see ``base`` for the interface.

The registry is this folder's listing: every module here but ``base`` registers its
method(s) when imported, so a new method is one file (its config dataclass, its math,
its ``register_method`` call) and is picked up by ``fit``, ``batch``, the CLI and the
method contract tests.
"""

import importlib
import pkgutil

from cacheclip.fit.methods.base import (
    FitContext,
    FitData,
    Method,
    RunPlan,
    Trained,
    get_method,
    list_methods,
    register_method,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["FitContext", "FitData", "Method", "RunPlan", "Trained", "get_method", "list_methods", "register_method"]
