"""Method plugins (``cacheclip.methods`` entry points): a good one is a method like the built-in
ones; a broken one of each kind is named when asked for, warned about in ``cacheclip methods``,
and leaves every other method, ``--help`` and the start-up alone.

Plugins here are real installed distributions as importlib.metadata finds them: a
``*.dist-info`` folder (METADATA, entry_points.txt) and a module, on ``sys.path``."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cacheclip.errors import PluginError
from cacheclip.fit import methods
from cacheclip.fit.methods import CONTRACT_VERSION, broken_plugins, builtin_methods, get_method, list_methods
from cacheclip.fit.methods.plugins import RESERVED_FLAGS
from cacheclip.settings import settings_of


def ours(names: list[str]) -> list[str]:
    """The methods of the plugins these tests install (others may be installed: the example)."""
    return [n for n in names if n.startswith("fake-") or n == "twin"]


def broken_here() -> list:
    return [b for b in broken_plugins() if b.plugin.package.startswith("plug-")]


def module_text(name, flag="--fake-k", setting=True, contract=CONTRACT_VERSION, method_name=None, marker=None):
    """A plugin module: zero-shot's training under another name, with one integer setting."""
    field = f'setting(1, "a count", flag="{flag}")' if setting else "1"
    touch = f"open({str(marker)!r}, 'w').close()  # proves the module was imported" if marker else ""
    return textwrap.dedent(
        f"""
        from dataclasses import dataclass
        from cacheclip import Method, get_method, setting
        {touch}

        @dataclass(frozen=True)
        class Config:
            k: int = {field}

        METHOD = Method(
            name={method_name or name!r}, summary="a test plugin (tests)", config=Config,
            payload=lambda ctx: {{"k": ctx.config.k}}, train=get_method("zero-shot").train, contract={contract!r},
        )
        """
    )


def install(site: Path, dist: str, entries: dict[str, str], modules: dict[str, str]) -> None:
    """A distribution named ``dist`` declaring ``entries`` (entry name -> module:attr), with ``modules``."""
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[cacheclip.methods]\n{lines}")
    for module, text in modules.items():
        (site / f"{module}.py").write_text(text)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path to install plugins into; the registry reloads them around the test."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    methods._plugins.cache_clear()
    yield folder
    for name in [m for m in sys.modules if m.startswith("plug_")]:
        del sys.modules[name]
    methods._plugins.cache_clear()


def test_an_installed_plugin_is_a_method_like_the_built_in_ones(site, cli):
    install(site, "plug-good", {"fake-good": "plug_good:METHOD"}, {"plug_good": module_text("fake-good")})
    assert list_methods()[: len(builtin_methods())] == builtin_methods()
    assert ours(list_methods()) == ["fake-good"] and not broken_here()
    assert get_method("fake-good").summary.startswith("a test plugin")
    code, out, _ = cli("methods")
    assert code == 0 and "fake-good" in out and "plugin: plug-good 0.1" in " ".join(out.split())
    code, out, _ = cli("methods", "fake-good")
    assert code == 0 and "--fake-k" in out and f"method contract {CONTRACT_VERSION}" in out
    code, out, _ = cli("fit", "--method", "fake-good", "--help")
    assert code == 0 and "--fake-k" in out


BROKEN = {
    "import error": ({"plug_a": "import no_such_module_anywhere\n"}, "importing plug_a:METHOD failed"),
    "not a Method": ({"plug_a": "METHOD = 3\n"}, "is a int, not a cacheclip.Method"),
    "old contract": ({"plug_a": module_text("fake-a", contract=0)}, "written for contract 0"),
    "no contract": ({"plug_a": module_text("fake-a", contract=None)}, "states no contract version"),
    "other name": ({"plug_a": module_text("fake-a", method_name="fake-b")}, "named 'fake-b', its entry point"),
    "undeclared field": ({"plug_a": module_text("fake-a", setting=False)}, "field 'k' of its config is not"),
    "reserved flag": ({"plug_a": module_text("fake-a", flag="--shots")}, "--shots, an option of fit and batch"),
    "taken flag": ({"plug_a": module_text("fake-a", flag="--tip-alpha")}, "another method's 'alphas' has"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_plugin_is_named_and_the_others_work(site, cli, kind):
    modules, problem = BROKEN[kind]
    install(site, "plug-a", {"fake-a": "plug_a:METHOD"}, modules)
    install(site, "plug-good", {"fake-good": "plug_good:METHOD"}, {"plug_good": module_text("fake-good")})
    assert set(builtin_methods()) < set(list_methods()) and ours(list_methods()) == ["fake-good"]
    [broken] = broken_here()
    assert broken.plugin.name == "fake-a" and problem in broken.problem and broken.fix
    with pytest.raises(PluginError, match="plug-a 0.1 cannot be used") as e:
        get_method("fake-a")
    assert e.value.hint
    code, out, err = cli("methods")
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and "fake-good" in out and len(warnings) == len(broken_plugins())
    assert [w for w in warnings if "'fake-a'" in w]
    code, _, err = cli("fit", "--method", "fake-a", "--dataset", "eurosat")
    assert code == 1 and err.startswith("error: method 'fake-a' from plug-a 0.1 cannot be used") and "hint:" in err
    code, out, _ = cli("fit", "--method", "fake-good", "--help")
    assert code == 0 and "--fake-k" in out


def test_names_that_clash_set_both_plugins_aside_and_never_shadow_a_built_in(site):
    twin = module_text("twin")
    install(site, "plug-one", {"twin": "plug_one:METHOD", "gda": "plug_one:METHOD"}, {"plug_one": twin})
    install(site, "plug-two", {"twin": "plug_two:METHOD"}, {"plug_two": twin})
    assert set(builtin_methods()) <= set(list_methods()) and not ours(list_methods())
    problems = {(b.plugin.name, b.plugin.package): b.problem for b in broken_here()}
    assert problems == {
        ("gda", "plug-one 0.1"): "its name clashes with a built-in method",
        ("twin", "plug-one 0.1"): "its name clashes with another installed plugin",
        ("twin", "plug-two 0.1"): "its name clashes with another installed plugin",
    }
    assert get_method("gda").name == "gda" and get_method("gda").contract is None  # the built-in one


def test_cacheclip_help_imports_no_plugin_and_no_torch(site):
    marker = site / "imported"
    install(
        site, "plug-good", {"fake-good": "plug_good:METHOD"}, {"plug_good": module_text("fake-good", marker=marker)}
    )
    probe = (
        "import sys\nfrom cacheclip.cli.main import main\nsys.argv = ['cacheclip', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, 'plug_good' in sys.modules)\n"
    )
    env_path = f"{site}{':' + sys.path[0] if sys.path[0] else ''}"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={"PYTHONPATH": env_path})
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "False False", out.stderr
    assert not marker.exists()


def test_the_reserved_flags_are_those_of_fit_and_batch():
    """A plugin setting may not take a flag of the commands (it would never reach the method);
    the built-in clip-adapter's --batch-size predates the rule (batch's own option wins)."""
    from cacheclip.cli import batch, common, fit

    own = set()
    for command in (fit.fit, batch.batch):
        params = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
        own |= common._own_flags([p for p in params if not p.name.startswith("m_")])
    builtin_flags = {s.flag for m in builtin_methods() for _, s, _ in settings_of(get_method(m).config).values()}
    assert own - builtin_flags <= RESERVED_FLAGS, sorted(own - builtin_flags - RESERVED_FLAGS)
