"""MkDocs hook: the manual's tables that the code already holds are filled from the code.

A page marks where a table goes with an HTML comment on a line of its own:

- ``<!-- cacheclip:settings NAME -->``: method NAME's settings (option, TOML key, default, help),
  from its config dataclass (``cacheclip.settings.setting``);
- ``<!-- cacheclip:published NAME -->``: the published RN50 numbers of method NAME, their source
  and protocol, from ``cacheclip/results/data/published_rn50.json``;
- ``<!-- cacheclip:notes NAME -->``: paper, official code, kind, cost, the paper's protocol and
  what cacheclip changes (``cacheclip.cli.method_notes``, which ``cacheclip methods NAME`` prints);
- ``<!-- cacheclip:methods -->``: one row per registered method (name, paper, kind, cost);
- ``<!-- cacheclip:new_classes -->``: one row per built-in method, how it scores classes it never
  trained on under ``fit --classes base-to-new`` (``Method.new_classes``).

A marker naming an unknown method fails the build (``mkdocs build --strict`` in CI).
"""

from __future__ import annotations

import json
import logging
import re
from importlib import resources

MARKER = re.compile(r"^<!-- cacheclip:(\w+)(?: (\S+))? -->$", re.MULTILINE)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def settings_table(name: str) -> str:
    from cacheclip.fit.methods import get_method
    from cacheclip.settings import settings_of, to_text

    rows = ["| option | TOML key | default | meaning |", "|---|---|---|---|"]
    for key, (field, spec, _) in settings_of(get_method(name).config).items():
        default = to_text(field.default, spec.none_word) or "(none)"
        flag = f"`{spec.flag}`" if spec.flag else ""
        rows.append(f"| {flag} | `[{name}] {key}` | `{_cell(default)}` | {_cell(spec.help)} |")
    if len(rows) == 2:
        return "No settings.\n"
    return "\n".join(rows) + "\n"


def _published() -> dict:
    return json.loads(resources.files("cacheclip.results").joinpath("data/published_rn50.json").read_text("utf-8"))


def published_table(name: str) -> str:
    from cacheclip.results.published import METHOD_KEYS, PAPER_DATASETS, ZERO_SHOT_KEY

    data = _published()
    shots = data["_shots"]
    key = ZERO_SHOT_KEY if name == "zero-shot" else METHOD_KEYS.get(name)
    if key is None:
        note = data["_unverified"].get(name, "no published number is stored")
        return f"No per-dataset RN50 number is stored: {note}.\n"
    curve = data["_curves"][key]
    lines = [
        f"RN50, OpenAI weights, test top-1 (%). Source: {curve['source']}.",
        "",
        f"Their protocol: {curve['protocol']}.",
        "",
    ]
    if name == "zero-shot":
        lines += ["| dataset | top-1 |", "|---|---|"]
        lines += [f"| {d} | {data[d][key]:.2f} |" for d in PAPER_DATASETS]
    else:
        lines += ["| dataset | " + " | ".join(f"{s} shot" for s in shots) + " |", "|---" * (len(shots) + 1) + "|"]
        lines += [f"| {d} | " + " | ".join(f"{v:.2f}" for v in data[d][key]) + " |" for d in PAPER_DATASETS]
    for field, title in (("caveats", "Caveats"), ("unknown", "Not known"), ("never", "Never like for like here")):
        entries = [f"{'every dataset' if d == '*' else d}: {'; '.join(v)}" for d, v in curve.get(field, {}).items()]
        if entries:
            lines += ["", f"{title}: " + "; ".join(entries) + "."]
    lines += ["", "`cacheclip report` shows these beside your runs and says which cells are like for like."]
    return "\n".join(lines) + "\n"


def notes(name: str) -> str:
    from cacheclip.cli.method_notes import NOTES
    from cacheclip.fit.methods import get_method

    method, note = get_method(name), NOTES[name]
    lines = [
        f"- **Paper:** {note.paper}" + (f"; official code `{note.code}`" if note.code else ""),
        f"- **Kind:** {note.kind}",
        f"- **Cost:** {note.cost} per 16-shot run at 10 / 397 classes (see [Benchmarks](../benchmarks.md))",
        f"- **Paper's protocol:** {note.protocol}",
        f"- **`--protocol official`:** {note.official}",
        "- **New classes (`--classes base-to-new`):** "
        + (method.new_classes.rule if method.new_classes else "refused: no rule for classes it never trained on"),
        "- **What cacheclip changes** (every result lists its own, in `protocol.differences`): "
        + "; ".join(note.changes),
        f"- `cacheclip methods {name}` prints this and the settings; `cacheclip fit --method {name} --help` "
        "shows its options. In one line: " + method.summary + ".",
    ]
    return "\n".join(lines) + "\n"


def methods_table() -> str:
    from cacheclip.cli.method_notes import NOTES
    from cacheclip.fit.methods import builtin_methods, get_method

    rows = ["| method | paper | kind | cost (10 / 397 classes) |", "|---|---|---|---|"]
    for name in builtin_methods():  # a plugin's documentation is its own package's
        note = NOTES.get(name)
        if note is None:  # registered without notes (tests/test_help.py asks for them)
            rows.append(f"| `{name}` | {_cell(get_method(name).summary)} | | |")
            continue
        rows.append(f"| [`{name}`]({note.page.removeprefix('methods/')}) | {note.paper} | {note.kind} | {note.cost} |")
    return "\n".join(rows) + "\n"


def new_classes_table() -> str:
    from cacheclip.fit.methods import builtin_methods, get_method

    rows = ["| method | new classes (base-to-new) |", "|---|---|"]
    for name in builtin_methods():
        rule = get_method(name).new_classes
        rows.append(f"| `{name}` | {_cell(rule.rule) if rule else 'refused: no rule'} |")
    return "\n".join(rows) + "\n"


def expand(markdown: str) -> str:
    def one(match: re.Match) -> str:
        what, name = match.group(1), match.group(2)
        if what == "settings":
            return settings_table(name)
        if what == "published":
            return published_table(name)
        if what == "notes":
            return notes(name)
        if what == "methods":
            return methods_table()
        if what == "new_classes":
            return new_classes_table()
        raise ValueError(f"unknown marker cacheclip:{what}")

    return MARKER.sub(one, markdown)


class _DocstringBrackets(logging.Filter):
    """Docstring prose such as ``x[i][j]`` reads as a Markdown reference link, and mkdocs-autorefs
    warns that it finds no target: under --strict that would fail the build for a docstring's
    wording. Such warnings (those whose source is a ``.py`` file) are shown as notes instead;
    the pages' own links stay strict."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and "cross-reference target" in message and ".py:" in message:
            logging.getLogger("mkdocs.hooks.cacheclip").info("docstring, not a link: %s", message)
            return False
        return True


def on_config(config):
    for handler in logging.getLogger("mkdocs").handlers:  # the handlers count warnings for --strict
        if not any(isinstance(f, _DocstringBrackets) for f in handler.filters):
            handler.addFilter(_DocstringBrackets())
    return config


def on_page_markdown(markdown, page, config, files):  # MkDocs calls it with these names
    return expand(markdown)
