"""Prompt templates: one per dataset (CoOp's), the ImageNet 7 and 80 ensembles, or a file.

A template holds one ``{}`` that takes a class name with "_" replaced by " ".
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from cacheclip.datasets.catalog import IMAGEFOLDER_PREFIX, get_dataset_spec
from cacheclip.errors import ConfigError, UnknownNameError

# The single template per dataset used by CoOp / CLIP-Adapter, by canonical dataset name.
DATASET_TEMPLATES: dict[str, str] = {
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagefolder": "a photo of a {}.",  # any imagefolder:<path> dataset
}
GENERIC_TEMPLATE = "a photo of a {}."

# The ImageNet 7-template ensemble (Tip-Adapter; CoOp's zero-shot ensemble).
IMAGENET7 = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_SETS = {
    "default": "the single template of the dataset (CoOp's)",
    "photo": f"'{GENERIC_TEMPLATE}' for every dataset",
    "imagenet7": "the 7-template ImageNet ensemble",
    "imagenet80": "CLIP's 80 ImageNet templates",
}


def list_template_sets() -> list[str]:
    """Names accepted by ``get_templates`` (besides a path to a template file)."""
    return list(TEMPLATE_SETS)


def _parse_templates(text: str, source: str) -> tuple[str, ...]:
    """One template per line; blank lines and lines starting with '#' are skipped."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            ok = "{}" in line and line.format("x") is not None
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(
                f"{source} line {n}: template {line!r} needs exactly one '{{}}' for the class name",
                "write each template as text with one {} (other braces doubled: {{ }})",
            )
        out.append(line)
    if not out:
        raise ConfigError(f"{source} holds no templates", "put one template with {} per line")
    return tuple(out)


def _dataset_template(dataset: str) -> str:
    if dataset.startswith((IMAGEFOLDER_PREFIX, "imagefolder-")):
        return DATASET_TEMPLATES["imagefolder"]
    spec = get_dataset_spec(dataset)
    return DATASET_TEMPLATES.get(spec.template_key or spec.name, GENERIC_TEMPLATE)


def get_templates(spec: str, dataset: str) -> tuple[str, ...]:
    """Templates for ``dataset`` from a set name (``list_template_sets()``) or a text file."""
    if spec == "default":
        return (_dataset_template(dataset),)
    if spec == "photo":
        return (GENERIC_TEMPLATE,)
    if spec == "imagenet7":
        return IMAGENET7
    if spec == "imagenet80":
        text = resources.files("cacheclip.datasets").joinpath("data/imagenet_templates_80.txt").read_text("utf-8")
        return _parse_templates(text, "imagenet_templates_80.txt")
    path = Path(spec).expanduser()
    if path.is_file():
        return _parse_templates(path.read_text("utf-8"), str(path))
    raise UnknownNameError(
        f"unknown template set '{spec}' (and no such file). Available: {', '.join(TEMPLATE_SETS)}",
        "use one of those names, or a path to a text file with one template containing {} per line",
    )


# ---------------------------------------------------------------- named text classifiers

SINGLE, ENSEMBLE = "single", "ensemble"  # the dataset's CoOp template; the 7-template ImageNet ensemble


def store_templates(spec: str, dataset: str) -> tuple[str, ...]:
    """The templates a store of ``dataset`` encodes for ``--templates spec``: the default holds the
    dataset's CoOp template and, for the ImageNet family, the 7-template ensemble too (text is
    cheap; papers differ on which ImageNet classifier they use). Other specs: their own set."""
    if spec != "default":
        return get_templates(spec, dataset)
    single = _dataset_template(dataset)
    if not imagenet_family(dataset):
        return (single,)
    return (single, *(t for t in IMAGENET7 if t != single))


def named_classifiers(templates: Sequence[str], dataset: str, spec: str) -> dict[str, list[int]]:
    """Indices into ``templates`` of each text classifier they hold: ``single`` (the dataset's
    CoOp template), ``ensemble`` (all 7 ImageNet templates) where present, and for a
    ``--templates`` set of the user's, all of them under its own name (``spec_label``)."""
    position = {t: i for i, t in enumerate(templates)}
    named: dict[str, list[int]] = {}
    single = _dataset_template(dataset)
    if single in position:
        named[SINGLE] = [position[single]]
    if all(t in position for t in IMAGENET7):
        named[ENSEMBLE] = [position[t] for t in IMAGENET7]
    if spec != "default":
        named.setdefault(spec_label(spec), list(range(len(templates))))
    return named


def spec_label(spec: str) -> str:
    """A ``--templates`` value as a classifier name: the set's name, or ``file:<name>`` for a file."""
    return spec if spec in TEMPLATE_SETS else f"file:{Path(spec).name}"


def imagenet_family(dataset: str) -> bool:
    """ImageNet and its shift sets: the datasets whose default stores hold the ensemble too."""
    if dataset.startswith((IMAGEFOLDER_PREFIX, "imagefolder-")):
        return False
    try:
        spec = get_dataset_spec(dataset)
    except UnknownNameError:
        return False
    return (spec.template_key or spec.name) == "imagenet"


def format_prompts(templates: Sequence[str], classnames: Sequence[str]) -> list[list[str]]:
    """Prompts indexed [template][class]: ``template.format(name.replace("_", " "))``."""
    names = [c.replace("_", " ") for c in classnames]
    return [[t.format(n) for n in names] for t in templates]
