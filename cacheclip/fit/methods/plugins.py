"""Methods from other installed packages: the ``cacheclip.methods`` entry-point group.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."cacheclip.methods"]
    my-method = "my_package:METHOD"

where ``METHOD`` is a ``cacheclip.Method`` whose ``name`` is the entry point's name and whose
``contract`` is the contract version it was written for (``CONTRACT_VERSION``). Each plugin is
loaded and checked on its own, the first time the methods are listed: one that fails (its import,
its contract version, its name, its settings) is set aside with the reason, and every other
method works as before. Nothing here runs for ``cacheclip --help``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from cacheclip.fit.methods.base import CONTRACT_VERSION, Method
from cacheclip.settings import settings_of

GROUP = "cacheclip.methods"
NAME = re.compile(r"^[a-z][a-z0-9+.-]*$")  # what fits a --method value, a TOML table and a folder name
# Flags of `fit` and `batch` themselves: a method setting may not take one (it would never reach the method).
RESERVED_FLAGS = frozenset(
    {
        "--aug-views", "--batch-size", "--cache-dir", "--classes", "--classifier", "--config", "--dataset",
        "--datasets", "--device", "--dry-run", "--epoch", "--fail-fast", "--no-fail-fast", "--force", "--help",
        "--method", "--methods", "--model", "--no-val", "--precision", "--pretrained", "--protocol", "--results",
        "--results-dir", "--root", "--seeds", "--shots", "--targets", "--templates", "--views", "--workers",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Plugin:
    """Where an installed method comes from (``cacheclip methods`` says it)."""

    name: str
    value: str  # the entry point's target, "module:attribute"
    package: str  # the distribution that declares it, "name version"


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin set aside, and why: named when it is asked for, warned about in ``cacheclip methods``."""

    plugin: Plugin
    problem: str
    fix: str


def load_plugins(builtin: dict[str, Method]) -> tuple[dict[str, tuple[Method, Plugin]], list[BrokenPlugin]]:
    """Every installed plugin method that loads and keeps the contract, and those that do not."""
    found = sorted(entry_points(group=GROUP), key=lambda ep: (ep.name, ep.value))
    loaded: dict[str, tuple[Method, Plugin]] = {}
    broken: list[BrokenPlugin] = []
    clashing = {ep.name for ep in found if sum(other.name == ep.name for other in found) > 1}
    for ep in found:
        plugin = Plugin(ep.name, ep.value, _package(ep))
        if ep.name in builtin or ep.name in clashing:
            others = "a built-in method" if ep.name in builtin else "another installed plugin"
            fix = f"uninstall one of them, or rename the entry point in {plugin.package}"
            broken.append(BrokenPlugin(plugin, f"its name clashes with {others}", fix))
            continue
        method, problem = _load(ep, plugin)
        if problem is None:
            problem = _settings_problem(method, builtin, loaded)
        if problem is not None:
            broken.append(BrokenPlugin(plugin, *problem))
            continue
        loaded[ep.name] = (method, plugin)
    return loaded, broken


def _package(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown package"


def _load(ep: EntryPoint, plugin: Plugin) -> tuple[Method | None, tuple[str, str] | None]:
    reinstall = f"fix or reinstall {plugin.package}, or uninstall it"
    try:
        method = ep.load()
    except (Exception, SystemExit) as e:  # any failure of someone else's import must not stop ours
        return None, (f"importing {plugin.value} failed: {type(e).__name__}: {e}", reinstall)
    if not isinstance(method, Method):
        return None, (f"{plugin.value} is a {type(method).__name__}, not a cacheclip.Method", reinstall)
    if method.contract != CONTRACT_VERSION:
        stated = (
            "states no contract version" if method.contract is None else f"was written for contract {method.contract}"
        )
        return None, (
            f"it {stated}; this cacheclip keeps method contract {CONTRACT_VERSION}",
            f"install a version of {plugin.package.split()[0]} written for contract {CONTRACT_VERSION} "
            "(docs: writing-a-method), or a cacheclip that keeps its contract",
        )
    if method.name != ep.name:
        return None, (f"its Method is named '{method.name}', its entry point '{ep.name}'", reinstall)
    if not NAME.match(method.name):
        return None, (f"'{method.name}' is not a method name (lowercase letters, digits, - + .)", reinstall)
    return method, None


def _settings_problem(
    method: Method, builtin: dict[str, Method], loaded: dict[str, tuple[Method, Plugin]]
) -> tuple[str, str] | None:
    """Why the method's settings cannot become options and a TOML table, or None."""
    fix = "each setting: a field of a frozen dataclass declared with cacheclip.setting(default, help, flag='--...')"
    config = method.config
    if not (isinstance(config, type) and dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
        return f"its config {config!r} is not a frozen dataclass", fix
    try:
        settings = settings_of(config)
        method.validate(config())
    except Exception as e:
        return f"its settings do not load: {type(e).__name__}: {e}", fix
    undeclared = sorted({f.name for f in dataclasses.fields(config)} - set(settings))
    if undeclared:
        return f"field '{undeclared[0]}' of its config is not a setting", fix
    taken = _flags_in_use(builtin, loaded)
    for key, (_, spec, _) in settings.items():
        if not spec.help or not spec.flag or not spec.flag.startswith("--"):
            return f"setting '{key}' has no help or no --flag", fix
        if spec.flag in RESERVED_FLAGS:
            return f"setting '{key}' takes {spec.flag}, an option of fit and batch", "give it a flag of its own"
        if taken.get(spec.flag, key) != key:
            return f"setting '{key}' takes {spec.flag}, which another method's '{taken[spec.flag]}' has", (
                "give it a flag of its own (one flag means one setting)"
            )
    return None


def _flags_in_use(builtin: dict[str, Method], loaded: dict[str, tuple[Method, Plugin]]) -> dict[str, str]:
    """flag -> setting name, over the methods already accepted."""
    methods = [*builtin.values(), *(m for m, _ in loaded.values())]
    return {spec.flag: key for m in methods for key, (_, spec, _) in settings_of(m.config).items() if spec.flag}
