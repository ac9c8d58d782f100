"""The fit stage: a feature store -> few-shot runs -> result JSONs (and adapter files).

For each shot count, the chosen method trains every seed's run (CLIP-Adapter:
all seeds x alphas x betas in one batched pass) and selects its
hyperparameters on the few-shot val split. Only then does ``fit`` read the
test split, once, to evaluate each selected run and zero-shot CLIP. Methods
get a ``FitContext`` that cannot read test.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cacheclip.common import COOP_CROP_SCALE, package_versions
from cacheclip.datasets.catalog import is_shift_set
from cacheclip.datasets.fewshot import FewShotSplit, sample_run, sample_run_with_holdout
from cacheclip.errors import (
    ConfigError,
    MissingFeaturesError,
    StoreError,
    StoreMismatchError,
    UnknownNameError,
    require_writable_dir,
)
from cacheclip.features.freshness import check_freshness
from cacheclip.features.models import ModelRef
from cacheclip.features.store import IDENTITY_KEYS, FeatureStore, open_store, parts_dir, store_path
from cacheclip.fit.classes import (
    CLASS_MODES,
    BaseClassesContext,
    BaseToNewTest,
    ClassSplit,
    check_method,
    split_classes,
)
from cacheclip.fit.classifier import PAPER, choose_classifier, paper_for
from cacheclip.fit.methods import FitContext, FitData, Method, RunPlan, Trained, get_method
from cacheclip.fit.methods.base import Progress, zero_shot_predictor
from cacheclip.fit.metrics import classification_metrics
from cacheclip.fit.targets import Target, load_targets, score_targets
from cacheclip.results import runs as rr
from cacheclip.settings import check_bounds, setting

NO_VAL_POLICIES = ("none", "holdout")
VIEW_MODES = ("aug", "clean")
PROTOCOLS = ("fewshot", "official")
EPOCH_RULES = ("last", "best-val")


@dataclass(frozen=True)
class FitConfig:
    """One dataset's few-shot grid and the chosen method's settings; every resolved value is
    written into each result. The method's own settings live in its config dataclass."""

    method: str = "clip-adapter"
    method_config: Any = None  # the method's config (``get_method(method).config``); None: its defaults
    shots: tuple[int, ...] = setting((1, 2, 4, 8, 16), "shots per class", flag="--shots")
    seeds: tuple[int, ...] = setting((1, 2, 3), "few-shot sampling seeds", flag="--seeds")
    views: str = setting(
        "aug", "aug: a cached augmented view per image per epoch; clean: no augmentation", flag="--views"
    )
    no_val: str = setting("none", "datasets without val (ImageNet): none (no selection) or holdout", flag="--no-val")
    protocol: str = setting(
        "fewshot",
        "fewshot: choose on the few-shot val only; official: each method's published protocol (its val "
        "set, grids and settings), never choosing on test",
        flag="--protocol",
    )
    epoch: str = setting(
        "last",
        "trained methods: last (the last epoch) or best-val (the first epoch with the best val top-1)",
        flag="--epoch",
    )
    classifier: str = setting(
        PAPER,
        "text classifier: paper (each method's paper's; ImageNet stores hold single and ensemble), single, "
        "ensemble, single+ensemble, or the name of the store's --templates set",
        flag="--classifier",
    )
    classes: str = setting(
        "all",
        "all: train and test on every class; base-to-new: train on the first half of the classes, test on "
        "them and on the other half (CoCoOp's protocol)",
        flag="--classes",
    )
    targets: tuple[str, ...] = setting(
        (),
        "ImageNet only: test sets the final classifiers are also evaluated on (e.g. imagenet-shift)",
        flag="--targets",
    )
    cache_dir: str = setting("cache", "root of the feature stores", flag="--cache-dir")
    results_dir: str = setting("results", "result JSONs, adapters and batch logs", flag="--results-dir")
    device: str = setting("cpu", "cpu, cuda or cuda:N (batch: auto, CUDA when available)", flag="--device")
    force: bool = False  # redo runs whose result already exists

    @property
    def settings(self) -> Any:
        """The method's config, its defaults when none was given."""
        return self.method_config if self.method_config is not None else get_method(self.method).config()

    def validate(self) -> None:
        get_method(self.method).validate(self.settings)
        check_bounds(self.settings, f"--method {self.method}")  # counts within what can run, floats finite
        if self.no_val not in NO_VAL_POLICIES:
            raise ConfigError(f"--no-val {self.no_val} is not supported", "use none or holdout")
        if self.views not in VIEW_MODES:
            raise ConfigError(f"--views {self.views} is not supported", "use aug or clean")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol {self.protocol} is not supported", "use fewshot or official")
        if not self.classifier.strip("+") or "++" in self.classifier:
            raise ConfigError(f"--classifier '{self.classifier}' names no classifier", "e.g. --classifier ensemble")
        if self.epoch not in EPOCH_RULES:
            raise ConfigError(f"--epoch {self.epoch} is not supported", "use last or best-val")
        if not self.shots or min(self.shots) < 1 or not self.seeds:
            raise ConfigError(
                "--shots must be positive integers and --seeds non-empty", "e.g. --shots 1,2,4,8,16 --seeds 1,2,3"
            )
        check_seeds(self.seeds)
        self._check_classes()

    def _check_classes(self) -> None:
        if self.classes not in CLASS_MODES:
            raise ConfigError(f"--classes {self.classes} is not supported", "use all or base-to-new")
        if self.classes == "all":
            return
        if self.targets:
            raise ConfigError(
                "--targets cannot be combined with --classes base-to-new (the target sets share no class split)",
                "run the targets in a --classes all fit",
            )
        check_method(get_method(self.method))


def test_only(dataset: str) -> bool:
    """A registered test-only set (ImageNet's shift sets); stores of other names are not."""
    try:
        return is_shift_set(dataset)
    except UnknownNameError:
        return False


def check_seeds(seeds: tuple[int, ...]) -> None:
    """Seeds feed numpy, torch and Python generators: keep them where all three accept them."""
    if any(not 0 <= seed < 2**31 for seed in seeds):
        raise ConfigError(
            f"--seeds {','.join(map(str, seeds))}: each seed must be in 0..2147483647", "e.g. --seeds 1,2,3"
        )


# ---------------------------------------------------------------- store -> FitData


def load_fit_data(
    store: FeatureStore, dataset: str, cfg: FitConfig | None = None, hint: str = "", method: Method | None = None
) -> FitData:
    """What ``cfg``'s runs read from ``store``, test excluded; the text is the classifier
    ``cfg.classifier`` picks for ``cfg.method`` (``fit.classifier``), the resolved ``method``."""
    cfg = cfg or FitConfig()
    method = method or get_method(cfg.method)
    attrs = dict(store.attrs)
    spec = str(attrs.get("templates_spec", "default"))
    text = choose_classifier(
        store.classifiers, dataset, spec, method.name, method.paper_classifier, cfg.classifier, hint
    )
    per_template, ensemble = (torch.from_numpy(t).float() for t in store.text_features())
    # the store's own ensemble when it is the one chosen: the same bits as every earlier run
    stored_ensemble = len(text.rows) > 1 and list(text.rows) == store.ensemble_rows
    train, val = store.listing("train"), store.listing("val")
    return FitData(
        dataset=dataset,
        store=store.path,
        attrs=attrs,
        classnames=store.classnames,
        class_weights=ensemble if stored_ensemble else text.weights(per_template),
        classifier=text.words(),
        per_template=per_template[list(text.rows)],
        templates=[store.templates[i] for i in text.rows],
        text_classifier=text,
        logit_scale=float(store.attrs["logit_scale"]),
        train_labels=list(train.labels),
        val_labels=list(val.labels),
        train_paths=list(train.paths),
        val_paths=list(val.paths),
        aug_views=store.num_aug_views(),
    )


def extract_command(dataset: str, model_arg: str, pretrained_arg: str, cfg: FitConfig, attrs: dict) -> str:
    """The exact `cacheclip extract` call that adds what this fit needs to the store."""
    parts = [
        f"cacheclip extract --dataset {dataset} --model {model_arg} --pretrained {pretrained_arg}",
        f"--cache-dir {cfg.cache_dir}",
        f"--shots {','.join(map(str, cfg.shots))}",
        f"--seeds {','.join(map(str, cfg.seeds))}",
    ]
    if attrs:
        parts.append(f"--aug-views {attrs.get('aug_views', 10)} --dtype {attrs.get('dtype', 'float16')}")
        scale = json.loads(attrs.get("aug_scale", "[]"))
        if scale and list(scale) != list(COOP_CROP_SCALE):
            parts.append("--aug-scale " + ",".join(str(s) for s in scale))
        if attrs.get("templates_spec", "default") != "default":
            parts.append(f"--templates {attrs['templates_spec']}")
        if attrs.get("preprocess_protocol", "default") != "default":
            parts.append(f"--preprocess {attrs['preprocess_protocol']}")
    if cfg.no_val == "holdout":
        parts.append("--holdout-val")
    return " ".join(parts)


# ---------------------------------------------------------------- planning


def selection_source(data: FitData, cfg: FitConfig) -> str:
    if data.val_labels:
        return "val"
    return "holdout" if cfg.no_val == "holdout" else "none"


def sample_splits(data: FitData, shots: int, cfg: FitConfig) -> dict[int, FewShotSplit]:
    if not data.val_labels and cfg.no_val == "holdout":
        return {s: sample_run_with_holdout(data.train_labels, shots, s) for s in cfg.seeds}
    return {s: sample_run(data.train_labels, data.val_labels, shots, s) for s in cfg.seeds}


def fit_context(
    store: FeatureStore | None,
    data: FitData,
    shots: int,
    cfg: FitConfig,
    *,
    extract_hint: str = "",
    progress: Progress | None = None,
    method: Method | None = None,
    classes: ClassSplit | None = None,
) -> FitContext:
    """What the method sees for one shot count (``store`` None: planning only, nothing read);
    ``method`` is cfg's, resolved by the caller (looked up here when not given). With ``classes``
    (base-to-new) it sees the base classes only."""
    make = FitContext if classes is None else lambda *a, **kw: BaseClassesContext(classes, *a, **kw)
    return make(
        store,
        data,
        cfg.settings,
        shots,
        views=cfg.views,
        selection=selection_source(data, cfg),
        device=cfg.device,
        extract_hint=extract_hint,
        progress=progress,
        protocol=cfg.protocol,
        epoch=cfg.epoch,
        method=method or get_method(cfg.method),
    )


def run_payload(ctx: FitContext, seed: int, cfg: FitConfig) -> dict[str, Any]:
    """Everything that changes a run's numbers; hashed into its key."""
    data = ctx.data
    return {
        "method": cfg.method,
        "dataset": data.dataset,
        "shots": ctx.shots,
        "seed": seed,
        "settings": ctx.method.payload(ctx),
        "selection": ctx.selection_source,
        "classifier": data.classifier,
        "templates": data.attrs.get("templates_spec"),
        "store": {k: data.attrs.get(k) for k in IDENTITY_KEYS},
        # only when not the default, so runs made before these settings keep their keys
        **({"protocol": cfg.protocol} if cfg.protocol != "fewshot" else {}),
        **({"epoch": ctx.epoch_rule} if ctx.epoch_rule != "last" and follows_epoch(ctx.method) else {}),
        **({"classes": cfg.classes} if cfg.classes != "all" else {}),
    }


def follows_epoch(method: Method) -> bool:
    """Whether ``--epoch`` applies to ``method`` (it trains by epochs)."""
    return not method.epoch_note


def epoch_setting(ctx: FitContext, cfg: FitConfig) -> str:
    """--epoch as a result records it: the rule the run followed, or why it does not apply."""
    note = ctx.method.epoch_note
    if note:
        return f"{cfg.epoch} (does not apply: {cfg.method} {note})"
    return ctx.epoch_rule + (f" ({ctx.epoch_fallback})" if ctx.epoch_fallback else "")


def plan_runs(
    data: FitData, shots: int, cfg: FitConfig, method: Method | None = None
) -> tuple[list[RunPlan], list[Path]]:
    """(runs to do, result folders of runs already done). Base-to-new runs keep the ordinary
    sample's base-class items (``BaseClassesContext.narrow``)."""
    todo, done = [], []
    ctx = fit_context(None, data, shots, cfg, method=method, classes=class_split(data, cfg))
    for seed, split in sample_splits(data, shots, cfg).items():
        split = ctx.narrow(split) if isinstance(ctx, BaseClassesContext) else split
        key = rr.run_key(run_payload(ctx, seed, cfg))
        folder = rr.run_dir(
            Path(cfg.results_dir),
            data.store.parent.parent.name,
            data.store.parent.name,
            data.dataset,
            cfg.method,
            shots,
            seed,
            key,
        )
        if cfg.force or not rr.is_done(folder, key):
            todo.append(RunPlan(seed, split, key, folder))
        else:
            done.append(folder)
    return todo, done


def class_split(data: FitData, cfg: FitConfig) -> ClassSplit | None:
    """The base / new classes of a base-to-new fit; None when it trains on every class."""
    return split_classes(data) if cfg.classes == "base-to-new" else None


# ---------------------------------------------------------------- the stage


def fit_dataset(
    dataset: str,
    ref: ModelRef,
    cfg: FitConfig,
    *,
    model_arg: str = "RN50",
    pretrained_arg: str = "openai",
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """All runs of ``cfg`` on one dataset's store; returns their results (skipped runs read back)."""
    cfg.validate()
    if test_only(dataset):
        raise ConfigError(
            f"{dataset} is a test-only set (no train split) and cannot be fitted",
            f"fit on imagenet and evaluate on it: cacheclip fit --dataset imagenet --targets {dataset}",
        )
    require_writable_dir(cfg.results_dir, "--results-dir")  # before training, not after
    method = get_method(cfg.method)  # resolved once, handed down
    path = store_path(cfg.cache_dir, ref.model_id, ref.weights_id, dataset)
    if parts_dir(path).exists() or not path.is_file():
        what = "has an unfinished extraction" if path.is_file() else "does not exist"
        raise MissingFeaturesError(
            f"the feature store {path} {what}", f"run: {extract_command(dataset, model_arg, pretrained_arg, cfg, {})}"
        )
    results = []
    fix = f"run: {extract_command(dataset, model_arg, pretrained_arg, cfg, {})}"
    with open_store(path, {"dataset": dataset, **ref.identity()}, fix) as store:
        hint = extract_command(dataset, model_arg, pretrained_arg, cfg, dict(store.attrs))
        data = load_fit_data(store, dataset, cfg, hint, method)
        inputs = verify_inputs(store, hint)
        targets = load_targets(
            cfg.targets, dataset, data.attrs, store.class_ids, cfg.cache_dir, ref.model_id, ref.weights_id, hint
        )
        classes = class_split(data, cfg)
        for shots in cfg.shots:
            todo, done = plan_runs(data, shots, cfg, method)
            results += [add_missing_targets(folder, data, targets) for folder in done]
            if todo:
                ctx = fit_context(
                    store, data, shots, cfg, extract_hint=hint, progress=progress, method=method, classes=classes
                )
                trained = method.train(ctx, todo)
                results += evaluate_on_test(store, ctx, trained, cfg, inputs=inputs, targets=targets)
    return results


def add_missing_targets(folder: Path, data: FitData, targets: list[Target]) -> dict[str, Any]:
    """A finished run's result; targets it lacks are evaluated from its saved classifier (the
    adapter file; zero-shot from the store's class weights), never by fitting again."""
    result = rr.read_result(folder)
    missing = [t for t in targets if t.name not in result.get("metrics", {}).get("targets", {})]
    if not missing:
        return result
    if result["method"] == "zero-shot":
        predict = zero_shot_predictor(data)
    else:
        from cacheclip.fit.predict import load_run

        predict = load_run(folder).predict
    result["metrics"].setdefault("targets", {}).update(score_targets(missing, predict))
    result["zero_shot"].setdefault("targets", {}).update(score_targets(missing, zero_shot_predictor(data)))
    rr.write_result(folder, result)
    return result


def shots_per_class(data: FitData, split) -> dict[str, int]:
    """Train images per class actually sampled: CoOp takes every image of a class smaller than
    the shot count, so ``--shots 16`` on a class of 9 gives 9 (the min shows it)."""
    counts = Counter(data.train_labels[i] for i in split.train)
    per_class = [counts.get(k, 0) for k in range(data.num_classes)]
    return {"min": min(per_class), "max": max(per_class)}


def verify_inputs(store: FeatureStore, extract_hint: str) -> str:
    """Refuse a store whose split files or images changed since extraction; returns what
    was verified, in words, for the results."""
    fresh = check_freshness(store)
    if fresh.stale:
        raise StoreMismatchError(f"{store.path} is stale: {fresh.describe()}", f"bring it up to date: {extract_hint}")
    return fresh.describe()


def evaluate_on_test(
    store: FeatureStore,
    ctx: FitContext,
    trained: list[Trained],
    cfg: FitConfig,
    *,
    inputs: str = "",
    targets: list[Target] = (),
) -> list[dict[str, Any]]:
    """The final evaluation: read test once, score each selected run and zero-shot, write results."""
    data, shots = ctx.data, ctx.shots
    start = time.perf_counter()
    zs_test, run_scores = test_scorer(store, ctx)
    zs_targets = score_targets(targets, zero_shot_predictor(data))
    k = data.num_classes
    results = []
    for t in trained:
        val = chosen_val(ctx, t)
        zs_val = classification_metrics(zero_shot_predictor(data)(val[0]), val[1], k) if val else None
        test_metrics = run_scores(t)
        if t.artifact is not None:
            tensors, meta = t.artifact
            rr.save_adapter(
                t.plan.folder / "adapter.safetensors",
                tensors,
                data.class_weights,
                {
                    **meta,
                    "method": cfg.method,
                    "model": model_identity(data),
                    "dataset": data.dataset,
                    "shots": shots,
                    "seed": t.plan.seed,
                    "classifier": data.classifier,
                    **({"classes": cfg.classes} if cfg.classes != "all" else {}),
                },
            )
        result = build_result(ctx, t, cfg, zs_val, zs_test, test_metrics)
        result["wall_time_s"] = round(t.seconds + (time.perf_counter() - start) / len(trained), 3)
        result["store"]["inputs"] = inputs or "not verified"
        result["fewshot"]["shots_per_class"] = shots_per_class(data, t.plan.split)
        if targets:  # after selection, once: nothing is chosen on a target
            result["metrics"]["targets"] = score_targets(targets, t.predict)
            result["zero_shot"]["targets"] = zs_targets
        rr.write_result(t.plan.folder, result)
        results.append(result)
    return results


def test_scorer(store: FeatureStore, ctx: FitContext) -> tuple[dict, Callable[[Trained], dict]]:
    """(zero-shot's test scores, a run's test scores), from the test split read once: {"test"} over
    every class, or {"base", "new", "harmonic_mean"} for base-to-new (each half among its classes)."""
    if isinstance(ctx, BaseClassesContext):
        test = BaseToNewTest.read(store, ctx.full_data, ctx.classes)
        return test.zero_shot(ctx.full_data), lambda t: test.run(ctx, t)
    test_feats, test_labels, _ = store.read("test")
    feats, labels = torch.from_numpy(test_feats), torch.from_numpy(test_labels)
    k = ctx.data.num_classes
    zs_test = {"test": classification_metrics(zero_shot_predictor(ctx.data)(feats), labels, k)}
    return zs_test, lambda t: {"test": classification_metrics(t.predict(feats), labels, k)}


def chosen_val(ctx: FitContext, t: Trained) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The val the run chose on (``Trained.val_set``), so that its zero-shot val score is on
    the same images as its own."""
    if t.val_set == "full":
        return ctx.full_val_features()
    if t.val_set == "per-class" and t.val_indices is not None:
        # through the context: a base-to-new run's indices are into its base-class view
        feats, labels, _ = ctx._read("val", list(t.val_indices), False)
        return torch.from_numpy(feats), torch.from_numpy(labels)
    return ctx.val_features(t.plan.split)


# ---------------------------------------------------------------- results


def model_identity(data: FitData) -> dict[str, Any]:
    keys = (
        "model",
        "model_config_sha256",
        "model_config_path",
        "pretrained",
        "weights_sha256",
        "state_sha256",
        "quick_gelu",
        "preprocess",
        "checkpoint_path",
    )
    return {k: data.attrs.get(k) for k in keys}


def pretrained_label(attrs: dict) -> str:
    p = attrs.get("pretrained")
    return f"file:{attrs.get('weights_sha256', '')[:12]}" if p == "file" else p


def protocol_differences(ctx: FitContext, cfg: FitConfig) -> list[str]:
    """How this run departs from the protocol behind the published numbers."""
    data, method = ctx.data, ctx.method
    diffs = list(method.differences(ctx))
    if not method.judges_templates and data.attrs.get("templates_spec", "default") != "default":
        diffs.append(f"templates {data.attrs.get('templates_spec')} (CoOp: the dataset's single template)")
    text = data.text_classifier
    if text is not None and text.departure and not method.judges_templates:  # those say it themselves
        diffs.append(text.departure)
    if data.attrs.get("dtype") == "float16":
        diffs.append("image features cached in float16")
    if data.attrs.get("precision", "fp32") != "fp32":
        diffs.append(f"features encoded with {data.attrs.get('precision')} autocast")
    if not data.val_labels and cfg.no_val == "holdout":
        diffs.append("val held out from the train split (CoOp's ImageNet has no val)")
    if ctx.epoch_fallback and follows_epoch(method):
        diffs.append(ctx.epoch_fallback)
    if isinstance(ctx, BaseClassesContext):
        diffs += method.new_classes.differences
    return diffs


def val_record(ctx: FitContext, t: Trained, val_paths: list[str]) -> dict[str, Any]:
    """The val a run chose on: the split's few-shot val, the whole val split (--protocol official for
    Tip-Adapter, GDA, ProKeR) or its own per-class sample of it (LP++'s K-shot val)."""
    if t.val_set == "full":
        return {"val_paths": f"all {len(ctx.data.val_paths)} images of the val split", "val_source": "full val split"}
    if t.val_set == "per-class":
        return {"val_paths": [val_paths[i] for i in t.val_indices], "val_source": f"{ctx.shots} val images per class"}
    return {"val_paths": [val_paths[i] for i in t.plan.split.val], "val_source": ctx.selection_source}


def build_result(
    ctx: FitContext, t: Trained, cfg: FitConfig, zs_val: dict | None, zs_test: dict, test_metrics: dict
) -> dict[str, Any]:
    """The result JSON; ``zs_test`` and ``test_metrics`` are ``test_scorer``'s blocks ({"test"}, or
    base / new / harmonic_mean)."""
    data, shots = ctx.data, ctx.shots
    diffs = protocol_differences(ctx, cfg)
    val_paths = data.val_paths if data.val_labels else data.train_paths
    return {
        "schema": rr.RESULT_SCHEMA,
        "run_key": t.plan.key,
        "method": cfg.method,
        "dataset": data.dataset,
        "shots": shots,
        "seed": t.plan.seed,
        "model": data.attrs.get("model"),
        "pretrained": pretrained_label(data.attrs),
        "config": {
            **t.config,
            "no_val": cfg.no_val,
            "device": cfg.device,
            "protocol": cfg.protocol,
            "epoch": epoch_setting(ctx, cfg),
            **({"classes": cfg.classes} if cfg.classes != "all" else {}),
        },
        "selection": t.selection,
        "store": {"path": str(data.store), "attrs": data.attrs},
        "versions": package_versions(),
        "fewshot": {
            "train_paths": [data.train_paths[i] for i in t.plan.split.train],
            **val_record(ctx, t, val_paths),
        },
        "protocol": {"name": cfg.protocol, "matches_paper": not diffs, "differences": diffs},
        "classifier": classifier_record(data, ctx.method),
        **classes_record(ctx),
        "zero_shot": {"val": zs_val, **zs_test},
        "metrics": {"val": t.val_metrics, **test_metrics},
        "adapter_file": "adapter.safetensors" if t.artifact is not None else None,
        "wall_time_s": round(t.seconds, 3),
    }


def classes_record(ctx: FitContext) -> dict[str, Any]:
    """{"classes": the split and the new-class rule} for a base-to-new run; nothing otherwise."""
    if not isinstance(ctx, BaseClassesContext):
        return {}
    return {"classes": ctx.classes.record(ctx.full_data, ctx.method.new_classes.rule)}


def classifier_record(data: FitData, method: Method) -> dict[str, Any]:
    """Which text classifier the run (and its zero-shot) used, why, and its paper's."""
    text = data.text_classifier
    paper = method.paper_classifier
    return {
        "name": text.name if text else None,
        "templates": list(data.templates),
        "rule": text.rule if text else None,
        "paper": paper_for(data.dataset, paper),
    }


def stores_for(ref: ModelRef, cache_dir: str | Path) -> list[str]:
    """Datasets that have a store for this model and weights."""
    folder = Path(cache_dir) / ref.model_id / ref.weights_id
    names = sorted(p.stem for p in folder.glob("*.h5")) if folder.is_dir() else []
    if not names:
        raise StoreError(f"no feature stores under {folder}", "run `cacheclip extract --dataset ...` first")
    return names
