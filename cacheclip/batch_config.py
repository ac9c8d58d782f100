"""What a batch runs: ``BatchConfig``, read from a TOML file and/or options.

Keys of the TOML file are the field names of ``BatchConfig``; any other key is
an error that names it and lists the valid ones. Relative paths in the file
(``root``, ``cache_dir``, ``results_dir``, model-config and checkpoint paths)
are relative to the file's folder. Options given on the command line replace
the file's values (``load_config(path, overrides)``).

``to_command`` turns a config back into the ``cacheclip batch`` call that
runs it, e.g. to retry one dataset.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_MODEL = "RN50"          # as in models.DEFAULT_MODEL (not imported: that pulls in torch)
DEFAULT_PRETRAINED = "openai"
EPOCHS_COOP = "coop"            # epochs policy: CoOp's epochs by shots (ImageNet 50)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    """One backbone of a batch, as the user names it (resolved later by ``models.resolve_model``)."""

    model: str = DEFAULT_MODEL              # open_clip name or model-config JSON path
    pretrained: str = DEFAULT_PRETRAINED    # weights tag, checkpoint file, or "none" (random)

    @property
    def label(self) -> str:
        short = lambda s: Path(s).name if os.sep in s or "/" in s else s  # noqa: E731
        return f"{short(self.model)}/{short(self.pretrained)}"


@dataclass(frozen=True)
class BatchConfig:
    """A grid of datasets x models x methods x shots x seeds, and where everything lives."""

    datasets: tuple[str, ...] = ("coop11",)          # names, 'coop11', 'all' or imagefolder:PATH
    models: tuple[ModelSpec, ...] = (ModelSpec(),)   # backbones, each extracted and fitted
    methods: tuple[str, ...] = ("clip-adapter",)     # few-shot methods (see `cacheclip methods`)
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)        # shots per class
    seeds: tuple[int, ...] = (1, 2, 3)               # few-shot sampling seeds
    adapter: str = "visual"                          # CLIP-Adapter variant: visual | text | both
    alphas: tuple[float, ...] = (0.2,)               # visual residual ratios; several -> chosen on val
    betas: tuple[float, ...] = (0.2,)                # text residual ratios; several -> chosen on val
    epochs: int | None = None                        # None: CoOp's policy (by shots; ImageNet 50)
    lr: float = 0.002                                # SGD learning rate (CoOp: 0.002)
    no_val: str = "none"                             # datasets without val (ImageNet): none | holdout
    device: str = "auto"                             # auto (cuda when available) | cpu | cuda | cuda:N
    root: str | None = None                          # data root; None: $CACHECLIP_DATA
    cache_dir: str = "cache"                         # root of the feature stores
    results_dir: str = "results"                     # result JSONs, adapters and batch logs
    aug_views: int = 10                              # augmented views cached per train image
    templates: str = "default"                       # prompt template set or file
    workers: int = min(4, os.cpu_count() or 1)       # image-decoding processes during extract
    batch_size: int = 64                             # images per forward pass during extract
    precision: str = "auto"                          # extract: auto (amp on CUDA, fp32 on CPU) | fp32 | amp
    fail_fast: bool = False                          # stop at the first failing dataset

    def dataset_names(self) -> list[str]:
        from .datasets import expand_names

        return expand_names(list(self.datasets))

    def validate(self) -> None:
        """ConfigError (or UnknownNameError) for values that cannot work."""
        from .adapters import AdapterConfig
        from .methods import get_method

        if not self.dataset_names():
            raise ConfigError("no datasets to run", "set datasets, e.g. --datasets coop11")
        if not self.models:
            raise ConfigError("no models to run", 'e.g. --model RN50 --pretrained openai')
        for method in self.methods:
            get_method(method)
        if not self.methods:
            raise ConfigError("no methods to run", "e.g. --methods clip-adapter")
        if not self.shots or min(self.shots) < 1 or not self.seeds:
            raise ConfigError("shots must be positive integers and seeds non-empty",
                              "e.g. --shots 1,2,4,8,16 --seeds 1,2,3")
        for a in self.alphas:
            for b in self.betas:
                AdapterConfig(kind=self.adapter, alpha=a, beta=b).validate()
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be positive or '{EPOCHS_COOP}', got {self.epochs}", "e.g. --epochs coop")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}", "CoOp uses 0.002")
        if self.no_val not in ("none", "holdout"):
            raise ConfigError(f"no_val {self.no_val!r} is not supported", "use none or holdout")
        if self.precision not in ("auto", "fp32", "amp"):
            raise ConfigError(f"precision {self.precision!r} is not supported", "use auto, fp32 or amp")
        if self.aug_views < 0 or self.workers < 0 or self.batch_size < 1:
            raise ConfigError("aug_views and workers must be >= 0 and batch_size >= 1",
                              "e.g. --aug-views 10 --workers 4 --batch-size 64")


# ---------------------------------------------------------------- reading values

def _fail(key: str, want: str, value: Any, source: str) -> ConfigError:
    return ConfigError(f"{source}: '{key}' must be {want}, got {value!r}", f"fix '{key}' in {source}")


def _is(kind: type, value: Any) -> bool:
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _listed(kind: type, want: str) -> Callable[[str, Any, str], tuple]:
    def convert(key: str, value: Any, source: str) -> tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or not all(_is(kind, v) for v in items):
            raise _fail(key, want, value, source)
        return tuple(kind(v) for v in items)
    return convert


def _scalar(kind: type, want: str) -> Callable[[str, Any, str], Any]:
    def convert(key: str, value: Any, source: str) -> Any:
        if not _is(kind, value):
            raise _fail(key, want, value, source)
        return kind(value)
    return convert


def _epochs(key: str, value: Any, source: str) -> int | None:
    if value is None or (isinstance(value, str) and value.lower() == EPOCHS_COOP):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) >= 1:
        return int(value)
    raise _fail(key, f"a positive integer or '{EPOCHS_COOP}'", value, source)


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
            raise ConfigError(f"{source}: unknown key '{unknown[0]}' in a models entry",
                              "valid keys of a models entry: model, pretrained")
        model, pretrained = entry["model"], entry.get("pretrained", DEFAULT_PRETRAINED)
        if not isinstance(model, str) or not isinstance(pretrained, str):
            raise _fail(key, want, entry, source)
        specs.append(ModelSpec(model, pretrained))
    return tuple(specs)


def _optional_str(key: str, value: Any, source: str) -> str | None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise _fail(key, "a string", value, source)
    return None if value is None else str(value)


_CONVERTERS: dict[str, Callable[[str, Any, str], Any]] = {
    "datasets": _listed(str, "a list of dataset names"),
    "models": _models,
    "methods": _listed(str, "a list of method names"),
    "shots": _listed(int, "a list of integers"),
    "seeds": _listed(int, "a list of integers"),
    "adapter": _scalar(str, "visual, text or both"),
    "alphas": _listed(float, "a list of numbers"),
    "betas": _listed(float, "a list of numbers"),
    "epochs": _epochs,
    "lr": _scalar(float, "a number"),
    "no_val": _scalar(str, "none or holdout"),
    "device": _scalar(str, "a string (auto, cpu, cuda, cuda:N)"),
    "root": _optional_str,
    "cache_dir": _optional_str,
    "results_dir": _optional_str,
    "aug_views": _scalar(int, "an integer"),
    "templates": _scalar(str, "a string"),
    "workers": _scalar(int, "an integer"),
    "batch_size": _scalar(int, "an integer"),
    "precision": _scalar(str, "auto, fp32 or amp"),
    "fail_fast": _scalar(bool, "true or false"),
}
assert set(_CONVERTERS) == {f.name for f in fields(BatchConfig)}
VALID_KEYS = tuple(_CONVERTERS)


def convert_values(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check keys and types of ``values`` and convert them to ``BatchConfig`` field values."""
    unknown = [k for k in values if k not in _CONVERTERS]
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'", f"valid keys: {', '.join(VALID_KEYS)}")
    out = {k: _CONVERTERS[k](k, v, source) for k, v in values.items()}
    for key in ("cache_dir", "results_dir"):
        if key in out and out[key] is None:
            raise _fail(key, "a string", None, source)
    return out


def _looks_like_path(value: str, base: Path, suffixes: tuple[str, ...]) -> bool:
    return "/" in value or os.sep in value or value.endswith(suffixes) or (base / value).exists()


def _rebase(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file's relative paths relative to its folder."""
    at = lambda p: p if Path(p).expanduser().is_absolute() else str(base / p)  # noqa: E731
    for key in ("root", "cache_dir", "results_dir"):
        if values.get(key):
            values[key] = at(values[key])
    if "models" in values:
        values["models"] = tuple(ModelSpec(
            at(m.model) if _looks_like_path(m.model, base, (".json",)) else m.model,
            at(m.pretrained) if _looks_like_path(m.pretrained, base, _CHECKPOINT_SUFFIXES) else m.pretrained)
            for m in values["models"])
    return values


def read_config_file(path: Path) -> dict[str, Any]:
    """The checked field values of a batch TOML file (paths made relative to its folder)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read batch config {path}: {e.strerror or e}",
                          "pass an existing TOML file to --config") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", "see docs/batch.md for an example") from None
    return _rebase(convert_values(raw, str(path)), path.parent)


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> BatchConfig:
    """The file's values (if any), replaced by ``overrides`` (e.g. command-line options); validated."""
    values = read_config_file(path) if path is not None else {}
    values.update(convert_values(overrides or {}, "options"))
    config = replace(BatchConfig(), **values)
    config.validate()
    return config


# ---------------------------------------------------------------- back to a command

def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


_FLAGS = (("methods", "--methods"), ("shots", "--shots"), ("seeds", "--seeds"), ("adapter", "--adapter"),
          ("alphas", "--alpha"), ("betas", "--beta"), ("epochs", "--epochs"), ("lr", "--lr"),
          ("no_val", "--no-val"), ("device", "--device"), ("cache_dir", "--cache-dir"),
          ("results_dir", "--results-dir"), ("aug_views", "--aug-views"), ("templates", "--templates"),
          ("workers", "--workers"), ("batch_size", "--batch-size"), ("precision", "--precision"))


def to_command(config: BatchConfig, *, datasets: list[str] | None = None,
               models: tuple[ModelSpec, ...] | None = None) -> str:
    """The ``cacheclip batch`` command line that runs ``config`` (optionally narrowed);
    options left at their defaults are omitted."""
    default, q = BatchConfig(), shlex.quote
    parts = ["cacheclip batch"]
    if config.root is not None:
        parts.append(f"--root {q(config.root)}")
    parts.append(f"--datasets {q(','.join(datasets or config.datasets))}")
    for spec in models or config.models:
        parts.append(f"--model {q(spec.model)} --pretrained {q(spec.pretrained)}")
    for name, flag in _FLAGS:
        value = getattr(config, name)
        if value != getattr(default, name):
            parts.append(f"{flag} {q(_text(value))}")
    return " ".join(parts)
