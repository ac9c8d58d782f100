"""What a batch runs: ``BatchConfig``, read from a TOML file and/or options.

A ``BatchConfig`` is composed of the stages' own configs: the extract config, the fit
grid, and each method's config. The TOML file's top-level keys are the batch's own
settings and the stage settings a batch shares (``shots`` sets the extract plan and the
fit grid alike); a table named after a method (``[clip-adapter]``, ``[tip-adapter]``...)
holds that method's settings, its keys the fields of its config. Conversion and
validation follow the dataclass fields (``cacheclip.settings``); any other key is an
error that names it and lists the valid ones. Relative paths in the file (``root``,
``cache_dir``, ``results_dir``, model-config and checkpoint paths) are relative to the
file's folder. Options given on the command line replace the file's values
(``load_config(path, overrides, method_options)``); a method option (e.g. ``--alpha``)
applies to every method of the batch that has it.

``to_command`` turns a config back into the ``cacheclip batch`` call that runs it, e.g.
to retry one dataset.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cacheclip.common import DEFAULT_MODEL, DEFAULT_PRETRAINED
from cacheclip.errors import ConfigError, require_writable_dir
from cacheclip.features.extract import ExtractConfig
from cacheclip.features.models import resolve_device
from cacheclip.fit.methods import get_method, list_methods
from cacheclip.fit.stage import FitConfig
from cacheclip.settings import build, changed, convert, from_text, setting, settings_of, to_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_EXTRACT_KEYS = ("templates", "preprocess", "aug_views", "workers", "batch_size", "precision")  # extract-only settings
_FIT_KEYS = ("views", "no_val", "protocol", "epoch", "classes", "classifier", "targets", "results_dir")  # fit-only
_SHARED_KEYS = ("shots", "seeds", "cache_dir")  # both stages
# Keys of batch files written before per-method tables: CLIP-Adapter's settings at the top level.
_LEGACY_KEYS = {"adapter": "adapter", "alphas": "alphas", "betas": "betas", "epochs": "epochs", "lr": "lr"}


@dataclass(frozen=True)
class ModelSpec:
    """One backbone of a batch, as the user names it (resolved later by ``models.resolve_model``)."""

    model: str = DEFAULT_MODEL  # open_clip name or model-config JSON path
    pretrained: str = DEFAULT_PRETRAINED  # weights tag, checkpoint file, or "none" (random)

    @property
    def label(self) -> str:
        return f"{_short(self.model)}/{_short(self.pretrained)}"


def _short(name: str) -> str:
    """A file's name, or a plain name as it is."""
    return Path(name).name if os.sep in name or "/" in name else name


@dataclass(frozen=True)
class BatchConfig:
    """A grid of datasets x models x methods x shots x seeds, composed of the stages' configs."""

    datasets: tuple[str, ...] = setting(("coop11",), "names, 'coop11', 'all' or imagefolder:PATH", flag="--datasets")
    models: tuple[ModelSpec, ...] = (ModelSpec(),)  # backbones, each extracted and fitted
    methods: tuple[str, ...] = setting(
        ("clip-adapter",), "few-shot methods (see `cacheclip methods`)", flag="--methods"
    )
    root: str | None = setting(None, "data root; unset: $CACHECLIP_DATA", flag="--root")
    device: str = setting("auto", "auto (CUDA when available), cpu, cuda or cuda:N", flag="--device")
    fail_fast: bool = setting(False, "stop at the first failing dataset", flag="--fail-fast")
    extract: ExtractConfig = ExtractConfig()  # what extraction does (its plan follows the fit grid)
    fit: FitConfig = FitConfig()  # the fit grid (method, device: set per run)
    method_settings: tuple[tuple[str, Any], ...] = ()  # (method, its config) where not its defaults

    # convenience views of the composed configs
    shots = property(lambda self: self.fit.shots)
    seeds = property(lambda self: self.fit.seeds)
    cache_dir = property(lambda self: self.fit.cache_dir)
    results_dir = property(lambda self: self.fit.results_dir)

    def method_config(self, name: str) -> Any:
        """The settings ``name`` runs with in this batch."""
        return dict(self.method_settings).get(name) or get_method(name).config()

    def dataset_names(self) -> list[str]:
        from cacheclip.datasets.catalog import expand_names

        return expand_names(list(self.datasets))

    def validate(self) -> None:
        """ConfigError (or UnknownNameError) for values that cannot work."""
        if not self.dataset_names():
            raise ConfigError("no datasets to run", "set datasets, e.g. --datasets coop11")
        if not self.models:
            raise ConfigError("no models to run", "e.g. --model RN50 --pretrained openai")
        if not self.methods:
            raise ConfigError("no methods to run", "e.g. --methods clip-adapter")
        for method in self.methods:
            replace(self.fit, method=method, method_config=self.method_config(method)).validate()
        self.extract.validate()
        if self.device != "auto":
            resolve_device(self.device)  # "tpu", or cuda on a machine without one
        require_writable_dir(self.cache_dir, "cache_dir")
        require_writable_dir(self.fit.results_dir, "results_dir")


# ---------------------------------------------------------------- reading values


def _fail(key: str, want: str, value: Any, source: str) -> ConfigError:
    return ConfigError(f"{source}: '{key}' must be {want}, got {value!r}", f"fix '{key}' in {source}")


def _models(key: str, value: Any, source: str) -> tuple[ModelSpec, ...]:
    want = 'a list of tables like [{model = "RN50", pretrained = "openai"}]'
    if isinstance(value, ModelSpec):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail(key, want, value, source)
    specs = []
    for entry in value:
        if isinstance(entry, ModelSpec):
            specs.append(entry)
            continue
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise _fail(key, want, entry, source)
        unknown = sorted(set(entry) - {"model", "pretrained"})
        if unknown:
            raise ConfigError(
                f"{source}: unknown key '{unknown[0]}' in a models entry",
                "valid keys of a models entry: model, pretrained",
            )
        model, pretrained = entry["model"], entry.get("pretrained", DEFAULT_PRETRAINED)
        if not isinstance(model, str) or not isinstance(pretrained, str):
            raise _fail(key, want, entry, source)
        specs.append(ModelSpec(model, pretrained))
    return tuple(specs)


def _field_type(cls: type, key: str) -> tuple[Any, str | None]:
    _, spec, kind = settings_of(cls)[key]
    return kind, spec.none_word


def valid_keys() -> list[str]:
    own = list(settings_of(BatchConfig)) + ["models"]
    tables = [f"[{m}] ({', '.join(settings_of(get_method(m).config)) or 'no settings'})" for m in list_methods()]
    return own + list(_SHARED_KEYS + _EXTRACT_KEYS + _FIT_KEYS) + tables


def _apply(config: BatchConfig, values: Mapping[str, Any], source: str) -> BatchConfig:
    """``config`` with top-level ``values`` (batch and stage keys) converted and applied."""
    own, extract, fit = {}, {}, {}
    for key, value in values.items():
        if key == "models":
            own[key] = _models(key, value, source)
            continue
        target = (
            (BatchConfig,)
            if key in settings_of(BatchConfig)
            else (ExtractConfig, FitConfig)
            if key in _SHARED_KEYS
            else (ExtractConfig,)
            if key in _EXTRACT_KEYS
            else (FitConfig,)
            if key in _FIT_KEYS
            else ()
        )
        if not target:
            raise ConfigError(f"{source}: unknown key '{key}'", f"valid keys: {', '.join(valid_keys())}")
        converted = convert(*_field_type(target[0], key)[:1], value, key, source, _field_type(target[0], key)[1])
        for cls, bucket in ((BatchConfig, own), (ExtractConfig, extract), (FitConfig, fit)):
            if cls in target:
                bucket[key] = converted
    for key in ("cache_dir", "results_dir"):
        if key in {**extract, **fit} and {**extract, **fit}[key] is None:
            raise _fail(key, "a string", None, source)
    return replace(config, **own, extract=replace(config.extract, **extract), fit=replace(config.fit, **fit))


def _with_method(config: BatchConfig, method: str, values: Mapping[str, Any], source: str) -> BatchConfig:
    """``config`` with ``values`` applied to ``method``'s settings (checked against its config)."""
    cls = get_method(method).config
    updated = build(cls, values, f"{source} [{method}]", base=config.method_config(method))
    others = tuple((m, c) for m, c in config.method_settings if m != method)
    return replace(config, method_settings=(*others, (method, updated)))


def apply_values(config: BatchConfig, raw: Mapping[str, Any], source: str) -> BatchConfig:
    """Top-level keys, method tables and legacy CLIP-Adapter keys of a TOML mapping."""
    tables = {k: v for k, v in raw.items() if isinstance(v, Mapping)}
    legacy = {_LEGACY_KEYS[k]: v for k, v in raw.items() if k in _LEGACY_KEYS and k not in tables}
    top = {k: v for k, v in raw.items() if k not in tables and k not in _LEGACY_KEYS}
    config = _apply(config, top, source)
    if legacy:
        config = _with_method(config, "clip-adapter", legacy, source)
    for method, values in tables.items():
        get_method(method)  # an unknown table names the valid methods
        config = _with_method(config, method, values, source)
    return config


def apply_method_options(config: BatchConfig, options: Mapping[str, str]) -> BatchConfig:
    """Command-line method options (flag -> text), each applied to every method of the batch
    that has it; an option no method of the batch has is an error."""
    for flag, text in options.items():
        owners = []
        for method in config.methods:
            for key, (_, spec, kind) in settings_of(get_method(method).config).items():
                if spec.flag == flag:
                    owners.append(method)
                    value = from_text(kind, text, flag, "options", spec.none_word)
                    config = _with_method(config, method, {key: value}, "options")
        if not owners:
            having = [
                m
                for m in list_methods()
                if any(s.flag == flag for _, s, _ in settings_of(get_method(m).config).values())
            ]
            raise ConfigError(
                f"{flag} is a setting of {', '.join(having) or 'no method'}, which this batch "
                f"does not run ({', '.join(config.methods)})",
                f"add the method to --methods, or drop {flag}",
            )
    return config


def _looks_like_path(value: str, base: Path, suffixes: tuple[str, ...]) -> bool:
    return "/" in value or os.sep in value or value.endswith(suffixes) or (base / value).exists()


def _rebase(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file's relative paths relative to its folder."""

    def at(p: str) -> str:
        return p if Path(p).expanduser().is_absolute() else str(base / p)

    for key in ("root", "cache_dir", "results_dir"):
        if values.get(key) and isinstance(values[key], str):
            values[key] = at(values[key])
    if "models" in values:
        values["models"] = tuple(
            ModelSpec(
                at(m.model) if _looks_like_path(m.model, base, (".json",)) else m.model,
                at(m.pretrained) if _looks_like_path(m.pretrained, base, _CHECKPOINT_SUFFIXES) else m.pretrained,
            )
            for m in values["models"]
        )
    return values


def read_config_file(path: Path) -> BatchConfig:
    """The batch of a TOML file over the defaults (paths made relative to its folder)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except OSError as e:
        raise ConfigError(
            f"cannot read batch config {path}: {e.strerror or e}", "pass an existing TOML file to --config"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text", "save the TOML file as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", "see the README's batch section for an example") from None
    if "models" in raw:
        raw["models"] = _models("models", raw["models"], str(path))
    return apply_values(BatchConfig(), _rebase(dict(raw), path.parent), str(path))


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    method_options: Mapping[str, str] | None = None,
) -> BatchConfig:
    """The file's values (if any), replaced by ``overrides`` (top-level keys, e.g. command-line
    options) and ``method_options`` (flag -> text); validated."""
    config = read_config_file(path) if path is not None else BatchConfig()
    config = apply_values(config, overrides or {}, "options")
    config = apply_method_options(config, method_options or {})
    config.validate()
    return config


def write_resolved(config: BatchConfig, path: Path) -> Path:
    """The resolved configuration as JSON (every stage's and method's settings, defaults included)
    and the command that reruns it: written beside the batch log, for the record."""
    from cacheclip.common import write_json_atomic

    record = {k: getattr(config, k) for k in settings_of(BatchConfig)}
    record.update(
        models=[dataclasses.asdict(m) for m in config.models],
        extract=dataclasses.asdict(config.extract),
        fit={k: v for k, v in dataclasses.asdict(config.fit).items() if k not in ("method", "method_config")},
        method_settings={m: dataclasses.asdict(config.method_config(m)) for m in config.methods},
        command=to_command(config),
    )
    return write_json_atomic(path, record)


# ---------------------------------------------------------------- back to a command


def _flags(config: BatchConfig) -> list[tuple[str, str]]:
    """(flag, text) of every setting that differs from its default, methods' included."""
    out = []
    for cls, obj, keys in (
        (BatchConfig, config, ("methods",)),
        (FitConfig, config.fit, _SHARED_KEYS + _FIT_KEYS),
        (BatchConfig, config, ("device",)),
        (ExtractConfig, config.extract, _EXTRACT_KEYS),
    ):
        default = cls()
        for key in keys:
            value, spec = getattr(obj, key), settings_of(cls)[key][1]
            if value != getattr(default, key):
                out.append((spec.flag, "" if isinstance(value, bool) else to_text(value, spec.none_word)))
    seen = {flag for flag, _ in out}
    for method in config.methods:
        specs = settings_of(get_method(method).config)
        for key, value in changed(config.method_config(method)).items():
            spec = specs[key][1]
            if spec.flag and spec.flag not in seen:
                seen.add(spec.flag)
                out.append((spec.flag, to_text(value, spec.none_word)))
    return out


def to_command(
    config: BatchConfig, *, datasets: list[str] | None = None, models: tuple[ModelSpec, ...] | None = None
) -> str:
    """The ``cacheclip batch`` command line that runs ``config`` (optionally narrowed);
    options left at their defaults are omitted."""
    q = shlex.quote
    parts = ["cacheclip batch"]
    if config.root is not None:
        parts.append(f"--root {q(config.root)}")
    parts.append(f"--datasets {q(','.join(datasets or config.datasets))}")
    for spec in models or config.models:
        parts.append(f"--model {q(spec.model)} --pretrained {q(spec.pretrained)}")
    parts += [f"{flag} {q(text)}" if text else flag for flag, text in _flags(config)]
    return " ".join(parts)
