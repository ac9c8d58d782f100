"""The README and the manual name only commands and options that exist, and the manual's
generated tables come from the code.

Every line of a code block in README.md and docs/ that runs ``cacheclip``, and every code span
``cacheclip ...`` of their prose, (also as
``.venv/bin/cacheclip`` or ``-m cacheclip``) is parsed: its command path must exist (``--help``
on it exits 0, through typer's runner, in-process) and each ``--option`` it names must be an
option of that command (fit and batch: every method's settings included). ``mkdocs build
--strict`` itself runs in ``.ci/run``.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from cacheclip.cli import common
from cacheclip.cli import main as cli_main
from cacheclip.fit.methods import builtin_methods as list_methods  # the manual documents the built-in ones

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INVOCATION = re.compile(r"(?:^|\s|/)(?:-m )?cacheclip (.*)$")
SPAN = re.compile(r"`cacheclip ([^`]+)`")  # a command in a code span of the prose


def _command_lines() -> list[tuple[str, str]]:
    """(page, the words after ``cacheclip``) for every command line of every code block."""
    found = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text("utf-8")):
            joined = re.sub(r"\\\n\s*", " ", block)  # shell line continuations
            for line in joined.splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith(("#", ">>>", "from ", "import ")):
                    continue
                match = INVOCATION.search(line)
                if match and "import" not in line:
                    found.append((str(page.relative_to(ROOT)), match.group(1)))
        prose = FENCE.sub("", page.read_text("utf-8"))
        found += [(str(page.relative_to(ROOT)), words) for words in SPAN.findall(prose)]
    return found


LINES = _command_lines()


@pytest.fixture(scope="module")
def root_command():
    for function, _ in cli_main._TAKES_METHOD_OPTIONS.values():
        common.attach_method_options(function)  # every method's settings, as a real run accepts them
    return typer.main.get_command(cli_main.app)


@functools.cache
def _help(path: tuple[str, ...]) -> tuple[int, str]:
    """(exit code, output) of ``cacheclip PATH --help``, once per command path."""
    result = CliRunner().invoke(cli_main.app, [*path, "--help"], prog_name="cacheclip")
    return result.exit_code, result.output


def _split(words: str) -> list[str]:
    cleaned = words.replace("[", " ").replace("]", " ").replace("|", " ")
    try:
        return shlex.split(cleaned)
    except ValueError:
        return cleaned.split()


def _resolve(root, tokens: list[str]) -> tuple[list[str], object]:
    """The command path at the start of ``tokens`` and the click command it names."""
    path, command = [], root
    for token in tokens:
        if not hasattr(command, "commands") or token.startswith("-"):
            break
        sub = command.commands.get(token)
        if sub is None:
            break
        path.append(token)
        command = sub
    return path, command


def test_the_pages_have_commands_to_check():
    assert len(LINES) > 60
    assert {"README.md", "docs/index.md", "docs/batch.md", "docs/data.md"} <= {page for page, _ in LINES}


@pytest.mark.parametrize(("page", "words"), LINES, ids=[f"{p}:{w[:40]}" for p, w in LINES])
def test_every_command_in_the_docs_exists(root_command, page, words):
    tokens = _split(words)
    path, command = _resolve(root_command, tokens)
    assert path, f"{page}: `cacheclip {words}` names no command"
    rest = tokens[len(path) :]
    if hasattr(command, "commands"):  # a group (typer may vendor its own click: no isinstance)
        assert not rest or rest[0].startswith("-"), f"{page}: `cacheclip {words}`: no command {rest[0]!r}"
    code, output = _help(tuple(path))
    assert code == 0, f"{page}: cacheclip {' '.join(path)} --help: {output}"
    known = {"--help"} | {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    named = {t.split("=")[0] for t in rest if re.fullmatch(r"--[a-z][a-z0-9+-]*(=.*)?", t)}
    assert named <= known, f"{page}: `cacheclip {words}`: unknown options {sorted(named - known)}"


def test_the_readme_is_short_and_lists_every_method():
    text = (ROOT / "README.md").read_text("utf-8")
    assert len(text.splitlines()) <= 320
    for name in list_methods():
        assert f"[`{name}`](docs/methods/" in text, name


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text("utf-8")
    for page in (ROOT / "docs").rglob("*.md"):
        assert str(page.relative_to(ROOT / "docs")) in nav, page


def test_the_hook_fills_every_methods_tables():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    for name in list_methods():
        page = hooks.expand(
            f"<!-- cacheclip:notes {name} -->\n<!-- cacheclip:settings {name} -->\n<!-- cacheclip:published {name} -->"
        )
        assert "<!--" not in page and "**Paper:**" in page and ("| option |" in page or "No settings" in page)
    assert all(f"`{name}`" in hooks.methods_table() for name in list_methods())
    with pytest.raises(ValueError, match="unknown marker"):
        hooks.expand("<!-- cacheclip:nonsense gda -->")
    gda = hooks.published_table("gda")
    assert "| eurosat | 58.30 | 67.88 | 75.40 | 81.70 | 86.12 |" in gda  # published_rn50.json's numbers


def test_the_readmes_links_into_the_manual_exist():
    text = (ROOT / "README.md").read_text("utf-8")
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)(?:#[^)]*)?\)", text)
    assert len(targets) > 20
    for target in targets:
        assert (ROOT / target).exists(), target
