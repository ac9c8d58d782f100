"""Which text classifier a fit uses, from the named ones its store holds.

ImageNet stores hold two (``datasets.templates.store_templates``): CoOp's single template and
the 7-template ensemble, because papers differ: CLIP-Adapter used the single template,
Tip-Adapter, GDA, ProKeR, LP++ and the cross-modal probe the ensemble, CLAP and TaskRes the
mean of all 8. ``--classifier paper`` (the default) gives each method its paper's
(``Method.paper_classifier``); elsewhere every paper used the dataset's single template,
which is what those stores hold. Composite names join classifiers: ``single+ensemble``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cacheclip.datasets.templates import SINGLE, imagenet_family, spec_label
from cacheclip.errors import ConfigError
from cacheclip.features.models import prompt_ensemble

PAPER = "paper"


@dataclass(frozen=True)
class TextClassifier:
    """The classifier a fit uses: its name, the store's template rows it averages, why it was
    chosen (``paper``, ``--classifier`` or the store's own ``--templates`` set) and, when it
    is not the paper's, the departure in words (empty otherwise)."""

    name: str
    rows: tuple[int, ...]
    rule: str
    departure: str = ""

    def weights(self, per_template: torch.Tensor) -> torch.Tensor:
        """(K, D) class weights: one template's raw embedding, or the prompt ensemble of several."""
        picked = per_template[list(self.rows)].float()
        return picked[0] if len(self.rows) == 1 else prompt_ensemble(picked)

    def words(self) -> str:
        """In words, as results have always recorded it (a part of every run key)."""
        n = len(self.rows)
        return "single template (raw embedding)" if n == 1 else f"ensemble of {n} templates"


def paper_for(dataset: str, paper: str) -> str:
    """The classifier a method's paper used on ``dataset``: its ImageNet choice on the ImageNet
    family, the dataset's single template elsewhere."""
    return paper if imagenet_family(dataset) else SINGLE


def choose_classifier(
    named: dict[str, list[int]], dataset: str, templates_spec: str, method: str, paper: str, choice: str, hint: str
) -> TextClassifier:
    """The classifier ``choice`` (``paper`` or names joined by '+') picks from the store's
    ``named`` classifiers for ``method``, whose paper used ``paper`` on ImageNet."""
    wanted = paper_for(dataset, paper)
    if choice != PAPER:
        rows = _rows(named, choice)
        if rows is None:
            raise ConfigError(
                f"--classifier {choice}: the store of {dataset} holds {', '.join(named) or 'no named classifier'}",
                f"pick one of those (or join them with '+'), or add it to the store: {hint}",
            )
        departure = "" if choice == wanted else f"classifier {choice} ({method}'s paper: {wanted})"
        return TextClassifier(choice, rows, "--classifier", departure)
    if templates_spec != "default":  # the user chose the store's text at extraction: use it
        name = spec_label(templates_spec)
        return TextClassifier(name, tuple(named[name]), f"--templates {templates_spec}")
    rows = _rows(named, wanted)
    if rows is not None:
        return TextClassifier(wanted, rows, PAPER)
    have = SINGLE if SINGLE in named else next(iter(named))  # the store's own (stores before schema 3 held one)
    departure = ""
    if imagenet_family(dataset):
        departure = (
            f"classifier {have}: the store predates the ImageNet ensemble ({method}'s paper: {wanted}); "
            f"re-run extract to add it (text only): {hint}"
        )
    return TextClassifier(have, tuple(named[have]), PAPER, departure)


def _rows(named: dict[str, list[int]], choice: str) -> tuple[int, ...] | None:
    """The template rows of ``choice`` (names joined by '+'), in order without repeats; None
    when the store lacks one of them."""
    parts = choice.split("+")
    if not all(part in named for part in parts):
        return None
    return tuple(dict.fromkeys(i for part in parts for i in named[part]))
