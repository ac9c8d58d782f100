"""Typed settings: one conversion for TOML values and command-line text, driven by the
fields of frozen config dataclasses.

A settable field is declared with ``setting(default, help, flag=...)``: its type
annotation says how a value is converted and checked, its help is the field's comment
and the option's help, its flag is the command-line option. ``build`` makes a config
from a mapping (unknown keys are an error that lists the valid ones); ``from_text``
converts an option's text. Floats must be finite; integers must fit in 32 bits (what numpy,
torch and the loops they drive accept), and a setting may bound its count lower with
``most`` (``--epochs 99999999999999999999`` is refused at once, not run). No torch here.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any

from cacheclip.errors import ConfigError

_META = "cacheclip.setting"
INT_LIMIT = 2**31 - 1  # the largest integer any setting takes (seeds, counts, sizes)


@dataclasses.dataclass(frozen=True)
class Setting:
    help: str
    flag: str | None = None  # command-line option, e.g. "--tip-alpha"
    none_word: str | None = None  # text that means None for an optional field, e.g. "coop"
    most: int | None = None  # an integer's (or each list item's) largest value, below INT_LIMIT


def setting(
    default: Any, help: str, *, flag: str | None = None, none_word: str | None = None, most: int | None = None
) -> Any:
    """A dataclass field that users may set (TOML key = field name; ``flag`` on the command line).
    ``most``: the largest integer that can run (e.g. epochs), checked like the type."""
    return dataclasses.field(default=default, metadata={_META: Setting(help, flag, none_word, most)})


def settings_of(cls: type) -> dict[str, tuple[dataclasses.Field, Setting, Any]]:
    """name -> (field, its Setting, its resolved type) for every settable field of ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, f.metadata[_META], hints[f.name]) for f in dataclasses.fields(cls) if _META in f.metadata}


def describe_type(kind: Any) -> str:
    args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple:
        inner = describe_type(args[0])
        return f"a list of {inner}s" if args[-1] is Ellipsis else f"{len(args)} {inner}s"
    if type(None) in args:
        return describe_type(next(a for a in args if a is not type(None)))
    return {int: "integer", float: "number", str: "string", bool: "true or false"}.get(kind, str(kind))


def convert(kind: Any, value: Any, key: str, source: str, none_word: str | None = None, most: int | None = None) -> Any:
    """``value`` (from TOML or already typed) as ``kind``; ConfigError naming ``key`` and ``source``.
    Integers (and integer list items) must be within ``-INT_LIMIT..most`` (default ``INT_LIMIT``)."""
    most = INT_LIMIT if most is None else min(most, INT_LIMIT)

    def fail() -> ConfigError:
        want = describe_setting(kind, none_word, most)
        shown = value if not isinstance(value, int) or abs(value) < 10**30 else f"{str(value)[:12]}... (huge)"
        return ConfigError(f"{source}: '{key}' must be {want}, got {shown!r}", f"fix '{key}' in {source}")

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if type(None) in args:  # Optional[X]
        if value is None or (none_word and isinstance(value, str) and value.lower() == none_word):
            return None
        return convert(next(a for a in args if a is not type(None)), value, key, source, none_word, most)
    if origin is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        fixed = args[-1] is not Ellipsis
        if not items or (fixed and len(items) != len(args)):
            raise fail()
        try:
            return tuple(
                convert(args[0] if not fixed else args[i], v, key, source, most=most) for i, v in enumerate(items)
            )
        except ConfigError:
            raise fail() from None
    if kind is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not -INT_LIMIT <= value <= most:
            raise fail()
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail()
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise fail()
        return value
    raise TypeError(f"unsupported setting type {kind!r} for '{key}'")


def describe_setting(kind: Any, none_word: str | None = None, most: int | None = None) -> str:
    """What a setting's value must be, in words: "integer of at most 2147483647 or 'coop'"."""
    most = INT_LIMIT if most is None else min(most, INT_LIMIT)
    return describe_type(kind) + _range_words(kind, most) + (f" or '{none_word}'" if none_word else "")


def _range_words(kind: Any, most: int) -> str:
    """ " up to N" when ``kind`` holds integers."""
    inner = [a for a in typing.get_args(kind) if a is not type(None) and a is not Ellipsis] or [kind]
    return f" of at most {most}" if int in inner else ""


def from_text(
    kind: Any, text: str, key: str, source: str, none_word: str | None = None, most: int | None = None
) -> Any:
    """Command-line text (comma lists for tuples) as ``kind``."""

    def scalar(inner: Any, word: str) -> Any:
        if inner is bool:
            return {"true": True, "false": False}.get(word.lower(), word)
        for cast in (int,) if inner is int else (float,) if inner is float else ():
            try:
                return cast(word)
            except ValueError:
                return word
        return word

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
        if none_word and text.lower() == none_word:
            return None
        return from_text(inner, text, key, source, none_word, most)
    if origin is tuple:
        words = [w for w in text.replace(" ", "").split(",") if w]
        fixed = args[-1] is not Ellipsis
        value = [scalar(args[0] if not fixed else args[min(i, len(args) - 1)], w) for i, w in enumerate(words)]
        return convert(kind, value, key, source, most=most)
    return convert(kind, scalar(kind, text.strip()), key, source, none_word, most)


def build(cls: type, values: Mapping[str, Any], source: str, base: Any = None) -> Any:
    """``base`` (default: ``cls()``) with ``values`` converted and applied; unknown keys fail."""
    known = settings_of(cls)
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'", f"valid keys: {', '.join(known) or '(none)'}")
    converted = {
        k: convert(known[k][2], v, k, source, known[k][1].none_word, known[k][1].most) for k, v in values.items()
    }
    return dataclasses.replace(base if base is not None else cls(), **converted)


def check_bounds(config: Any, source: str = "options") -> None:
    """Every settable field of ``config`` as ``convert`` would accept it (integers within their
    bounds, floats finite): for configs built from typed options rather than through ``build``.
    ConfigError naming the option."""
    for key, (_, spec, kind) in settings_of(type(config)).items():
        convert(kind, getattr(config, key), spec.flag or key, source, spec.none_word, spec.most)


def changed(config: Any) -> dict[str, Any]:
    """The settable fields of ``config`` that differ from their defaults."""
    default = type(config)()
    return {k: getattr(config, k) for k in settings_of(type(config)) if getattr(config, k) != getattr(default, k)}


def to_text(value: Any, none_word: str | None = None) -> str:
    """A value as command-line text (inverse of ``from_text``)."""
    if value is None:
        return none_word or ""
    if isinstance(value, tuple):
        return ",".join(to_text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)
