"""The help a newcomer reads: commands in the order of the work, `fit --help` with the shared
options only (a method's own with --method), `cacheclip methods NAME`."""

from __future__ import annotations

import re

import pytest

from cacheclip.cli.app import TOOLS, WORK
from cacheclip.cli.method_notes import NOTES
from cacheclip.fit.methods import builtin_methods, get_method, list_methods
from cacheclip.settings import settings_of


def _flags(method: str) -> set[str]:
    return {spec.flag for _, spec, _ in settings_of(get_method(method).config).values() if spec.flag}


def _all_flags() -> set[str]:
    return {flag for m in list_methods() for flag in _flags(m)}


def _shown(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9+-]*", text))


def test_commands_are_listed_in_the_order_of_the_work(cli):
    code, out, _ = cli("--help")
    assert code == 0
    names = re.findall(r"^│ (\w+) ", out, re.MULTILINE)
    assert names == [*WORK, *TOOLS], names
    assert out.index("Tools") > out.index("predict")


def test_fit_help_shows_the_shared_options_and_says_how_to_see_a_methods(cli):
    code, out, _ = cli("fit", "--help")
    assert code == 0
    shown = _shown(out)
    assert {"--dataset", "--method", "--shots", "--seeds", "--protocol"} <= shown
    assert not shown & _all_flags(), sorted(shown & _all_flags())
    assert "cacheclip fit --method NAME --help" in " ".join(out.split())


@pytest.mark.parametrize("method", ["gda", "clip-adapter", "tip-adapter-f", "lp++"])
def test_fit_help_with_a_method_shows_its_settings_only(cli, method):
    code, out, _ = cli("fit", "--method", method, "--help")
    assert code == 0
    shown = _shown(out)
    assert _flags(method) <= shown, sorted(_flags(method) - shown)
    others = _all_flags() - _flags(method)
    assert not shown & others, sorted(shown & others)
    assert f"{method} settings" in out


def test_method_help_shows_defaults(cli):
    code, out, _ = cli("fit", "--method=gda", "--help")
    assert code == 0 and "[default: 10]" in out  # not eaten as rich markup


def test_batch_help_with_methods_shows_theirs(cli):
    code, out, _ = cli("batch", "--methods", "gda,lp++", "--help")
    assert code == 0
    shown = _shown(out)
    assert (_flags("gda") | _flags("lp++")) <= shown
    assert not shown & (_flags("tip-adapter") - _flags("gda") - _flags("lp++"))
    code, out, _ = cli("batch", "--help")
    assert code == 0 and not _shown(out) & (_all_flags() - {"--batch-size"})


def test_a_hidden_setting_is_still_accepted_and_checked(cli):
    """Hiding other methods' settings from --help changes nothing on the command line: a setting of
    another method is still the usage error that names its method."""
    code, _, err = cli("fit", "--tip-alpha", "1", "--dataset", "eurosat")
    assert code == 2 and "tip-adapter" in err


def test_every_method_has_notes_and_a_manual_page():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    missing = set(builtin_methods()) - set(NOTES)
    assert not missing, f"{sorted(missing)}: add notes to cli/method_notes.py and a page under docs/methods/"
    assert set(NOTES) <= set(builtin_methods())
    for name, note in NOTES.items():
        assert (root / "docs" / note.page).is_file(), name
        assert note.paper and note.kind and note.cost and note.protocol and note.changes


@pytest.mark.parametrize("method", ["gda", "zero-shot", "lp++"])
def test_methods_name_describes_the_method(cli, method):
    code, out, _ = cli("methods", method)
    assert code == 0
    text = " ".join(out.split())
    note = NOTES[method]
    assert note.paper in text and note.protocol in text and "what cacheclip changes" in text
    for flag in _flags(method):
        assert flag in out
    for _, spec, _ in settings_of(get_method(method).config).values():
        assert spec.help.split()[0] in out


def test_methods_lists_them_and_an_unknown_one_is_an_error(cli):
    code, out, _ = cli("methods")
    assert code == 0 and all(m in out for m in list_methods()) and "cacheclip methods NAME" in out
    code, _, err = cli("methods", "nope")
    assert code == 1 and "unknown method" in err


def test_a_commands_own_option_wins_over_a_method_setting_of_the_same_flag():
    """batch --batch-size is extraction's batch size (its documented meaning), not CLIP-Adapter's."""
    import inspect

    import typer.main

    from cacheclip.cli import common
    from cacheclip.cli import main as cli_main

    common.attach_method_options(cli_main.batch.batch)
    names = set(inspect.signature(cli_main.batch.batch).parameters)
    assert "batch_size" in names and "m_batch_size" not in names
    command = typer.main.get_command(cli_main.app).commands["batch"]
    assert command.make_context("batch", ["--batch-size", "8"]).params["batch_size"] == 8
