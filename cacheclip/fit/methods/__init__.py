"""Few-shot methods on cached features, one module each; see ``base`` for the contract.

The registry is this folder's listing plus the installed plugins: every module here but ``base``
and ``plugins`` registers its method(s) when imported, so a built-in method is one file (its
config dataclass, its math, its ``register_method`` call); a method in another package registers
through the ``cacheclip.methods`` entry points (``plugins``). Both are picked up by ``fit``,
``batch``, the CLI and the method contract tests.
"""

import importlib
import pkgutil
from functools import cache

from cacheclip.errors import PluginError, UnknownNameError
from cacheclip.fit.methods.base import (
    CONTRACT_VERSION,
    FitContext,
    FitData,
    Method,
    RunPlan,
    Trained,
    builtin_registry,
    register_method,
)
from cacheclip.fit.methods.plugins import BrokenPlugin, Plugin, load_plugins

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in ("base", "plugins"):
        importlib.import_module(f"{__name__}.{_module}")


@cache
def _plugins() -> tuple[dict[str, tuple[Method, Plugin]], tuple[BrokenPlugin, ...]]:
    """Loaded once per process, the first time a method is listed or asked for."""
    loaded, broken = load_plugins(builtin_registry())
    return loaded, tuple(broken)


def builtin_methods() -> list[str]:
    """The methods of this folder, in registration order."""
    return list(builtin_registry())


def list_methods() -> list[str]:
    """Every usable method: the built-in ones, then the installed plugins that load (by name)."""
    return builtin_methods() + list(_plugins()[0])


def plugin_of(name: str) -> Plugin | None:
    """Where a plugin method comes from; None for a built-in one."""
    entry = _plugins()[0].get(name)
    return entry[1] if entry else None


def broken_plugins() -> list[BrokenPlugin]:
    """Installed plugins set aside, each with its problem and fix."""
    return list(_plugins()[1])


def get_method(name: str) -> Method:
    builtin = builtin_registry()
    if name in builtin:
        return builtin[name]
    loaded, broken = _plugins()
    if name in loaded:
        return loaded[name][0]
    for b in broken:
        if b.plugin.name == name:
            raise PluginError(f"method '{name}' from {b.plugin.package} cannot be used: {b.problem}", b.fix)
    raise UnknownNameError(
        f"unknown method '{name}'. Available: {', '.join(list_methods())}", "pass one of those to --method"
    )


__all__ = [
    "CONTRACT_VERSION",
    "BrokenPlugin",
    "FitContext",
    "FitData",
    "Method",
    "Plugin",
    "RunPlan",
    "Trained",
    "broken_plugins",
    "builtin_methods",
    "get_method",
    "list_methods",
    "plugin_of",
    "register_method",
]
