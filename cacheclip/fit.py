"""The fit stage: a feature store -> few-shot runs -> result JSONs and adapter files.

For each shot count, every (seed x alpha x beta) run is trained at once
(``train.train_runs``), the residual ratios are chosen per seed on the
few-shot val split, and only then is the test split read, to evaluate the
chosen adapter and zero-shot CLIP. Test never reaches training or selection.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import runs as rr
from .adapters import AdapterConfig, zero_shot_logits
from .augment import COOP_SCALE
from .errors import ConfigError, MissingFeaturesError, StoreError
from .evaluate import classification_metrics
from .fewshot import FewShotSplit, sample_run, sample_run_with_holdout
from .models import ModelRef
from .store import FeatureStore, open_store, parts_dir, store_path
from .train import RunSpec, TrainConfig, predict, resolve_epochs, train_runs

METHOD = "clip-adapter"
NO_VAL_POLICIES = ("none", "holdout")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FitConfig:
    """One dataset's few-shot grid; every resolved value is written into each result."""

    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (1, 2, 3)
    adapter: AdapterConfig = AdapterConfig()      # kind, reduction, block (alpha/beta come from the grids)
    alphas: tuple[float, ...] = (0.2,)            # visual ratios; several -> chosen on val
    betas: tuple[float, ...] = (0.2,)             # text ratios; several -> chosen on val
    train: TrainConfig = TrainConfig()
    no_val: str = "none"      # datasets without a few-shot val (ImageNet): none (no selection) | holdout
    cache_dir: str = "cache"
    results_dir: str = "results"
    device: str = "cpu"
    force: bool = False       # redo runs whose result already exists

    def candidates(self) -> list[AdapterConfig]:
        """The (alpha, beta) grid as adapter configs, in the order ties are broken."""
        a = self.adapter
        alphas = self.alphas if a.visual else (0.0,)
        betas = self.betas if a.text else (0.0,)
        return [replace(a, alpha=x, beta=y) for x in alphas for y in betas]

    def validate(self) -> None:
        if self.no_val not in NO_VAL_POLICIES:
            raise ConfigError(f"--no-val {self.no_val} is not supported", "use none or holdout")
        if not self.shots or min(self.shots) < 1 or not self.seeds:
            raise ConfigError("--shots must be positive integers and --seeds non-empty", "e.g. --shots 1,2,4,8,16 --seeds 1,2,3")
        for candidate in self.candidates():
            candidate.validate()
        self.train.validate()


@dataclass
class FitData:
    """What a store provides to the runs, test excluded."""

    dataset: str
    store: Path
    attrs: dict[str, Any]
    classnames: list[str]
    class_weights: torch.Tensor       # (K, D): the single template's raw embedding, or the ensemble
    classifier: str
    logit_scale: float
    train_labels: list[int]
    val_labels: list[int]
    train_paths: list[str]
    val_paths: list[str]
    aug_views: int


@dataclass
class RunOutcome:
    """A trained and selected run, before its test evaluation."""

    seed: int
    split: FewShotSplit
    key: str
    folder: Path
    chosen: AdapterConfig
    state: dict[str, torch.Tensor]
    selection: dict[str, Any]
    val_metrics: dict | None
    zero_shot_val: dict | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def extract_command(dataset: str, model_arg: str, pretrained_arg: str, cfg: FitConfig, attrs: dict) -> str:
    """The exact `cacheclip extract` call that adds what this fit needs to the store."""
    parts = [f"cacheclip extract --dataset {dataset} --model {model_arg} --pretrained {pretrained_arg}",
             f"--cache-dir {cfg.cache_dir}", f"--shots {','.join(map(str, cfg.shots))}",
             f"--seeds {','.join(map(str, cfg.seeds))}"]
    if attrs:
        parts.append(f"--aug-views {attrs.get('aug_views', 10)} --dtype {attrs.get('dtype', 'float16')}")
        scale = attrs.get("aug_scale")
        if scale and list(np.atleast_1d(eval_json(scale))) != list(COOP_SCALE):
            parts.append("--aug-scale " + ",".join(str(s) for s in eval_json(scale)))
        if attrs.get("templates_spec", "default") != "default":
            parts.append(f"--templates {attrs['templates_spec']}")
    if cfg.no_val == "holdout":
        parts.append("--holdout-val")
    return " ".join(parts)


def eval_json(text: Any) -> Any:
    import json

    return json.loads(text) if isinstance(text, str) else text


def load_fit_data(store: FeatureStore, dataset: str) -> FitData:
    per_template, ensemble = store.text_features()
    single = per_template.shape[0] == 1
    train, val = store.listing("train"), store.listing("val")
    return FitData(
        dataset=dataset, store=store.path, attrs=dict(store.attrs), classnames=store.classnames,
        class_weights=torch.from_numpy(per_template[0] if single else ensemble).float(),
        classifier="single template (raw embedding)" if single else f"ensemble of {per_template.shape[0]} templates",
        logit_scale=float(store.attrs["logit_scale"]), train_labels=list(train.labels),
        val_labels=list(val.labels), train_paths=list(train.paths), val_paths=list(val.paths),
        aug_views=store.num_aug_views(),
    )


def _read(store: FeatureStore, split: str, indices: Sequence[int], aug: bool, hint: str):
    try:
        return store.read(split, indices, aug=aug)
    except KeyError as e:
        missing = e.args[0]
        raise MissingFeaturesError(
            f"{store.path.name}: {len(missing)} {split} images needed by this fit have no features "
            f"(e.g. item {missing[0]})", f"run: {hint}") from None


def sample_splits(data: FitData, shots: int, seeds: Sequence[int], cfg: FitConfig) -> dict[int, FewShotSplit]:
    if data.val_labels:
        return {s: sample_run(data.train_labels, data.val_labels, shots, s) for s in seeds}
    if cfg.no_val == "holdout":
        return {s: sample_run_with_holdout(data.train_labels, shots, s) for s in seeds}
    return {s: sample_run(data.train_labels, [], shots, s) for s in seeds}


def selection_source(data: FitData, cfg: FitConfig) -> str:
    if data.val_labels:
        return "val"
    return "holdout" if cfg.no_val == "holdout" else "none"


def run_payload(data: FitData, shots: int, seed: int, cfg: FitConfig, epochs: int) -> dict[str, Any]:
    """Everything that changes a run's numbers; hashed into its key."""
    from .store import IDENTITY_KEYS

    return {
        "method": METHOD, "dataset": data.dataset, "shots": shots, "seed": seed,
        "adapter": {k: v for k, v in asdict(cfg.adapter).items() if k not in ("alpha", "beta")},
        "alphas": list(cfg.alphas), "betas": list(cfg.betas),
        "train": {**asdict(cfg.train), "epochs": epochs}, "selection": selection_source(data, cfg),
        "classifier": data.classifier, "templates": data.attrs.get("templates_spec"),
        "store": {k: data.attrs.get(k) for k in IDENTITY_KEYS},
    }


def protocol_differences(data: FitData, cfg: FitConfig, shots: int, views_used: str) -> list[str]:
    """How this run departs from the protocol behind the published numbers."""
    ref_train, diffs = TrainConfig(), []
    a = cfg.adapter
    if a.kind != "visual":
        diffs.append(f"adapter {a.kind} (published numbers: visual only)")
    if a.block != "official":
        diffs.append("paper block without trailing ReLU (published numbers: official block)")
    if a.reduction != 4:
        diffs.append(f"reduction {a.reduction} (paper: 4)")
    if a.visual and list(cfg.alphas) != [0.2]:
        diffs.append(f"alpha from {list(cfg.alphas)} (official code: fixed 0.2)")
    for name in ("lr", "batch_size", "weight_decay", "momentum", "warmup_epochs", "warmup_lr"):
        if getattr(cfg.train, name) != getattr(ref_train, name):
            diffs.append(f"{name} {getattr(cfg.train, name)} (CoOp: {getattr(ref_train, name)})")
    if cfg.train.epochs is not None and cfg.train.epochs != resolve_epochs(ref_train, shots, data.dataset):
        diffs.append(f"epochs {cfg.train.epochs} (CoOp: {resolve_epochs(ref_train, shots, data.dataset)})")
    diffs.append(views_used_difference(views_used))
    if data.attrs.get("templates_spec", "default") != "default":
        diffs.append(f"templates {data.attrs.get('templates_spec')} (CoOp: the dataset's single template)")
    if data.attrs.get("dtype") == "float16":
        diffs.append("image features cached in float16")
    if data.attrs.get("precision", "fp32") != "fp32":
        diffs.append(f"features encoded with {data.attrs.get('precision')} autocast")
    if not data.val_labels and cfg.no_val == "holdout":
        diffs.append("val held out from the train split (CoOp ImageNet has no val)")
    return diffs


def views_used_difference(views_used: str) -> str:
    return {"aug": "augmentation from cached views, one per image per epoch (CoOp: a fresh random crop every epoch)",
            "clean": "no augmentation: the clean view every epoch (CoOp: random crop + flip)"}[views_used]


def fit_dataset(dataset: str, ref: ModelRef, cfg: FitConfig, *, model_arg: str = "RN50",
                pretrained_arg: str = "openai", progress: Progress | None = None) -> list[dict[str, Any]]:
    """All runs of ``cfg`` on one dataset's store; returns their result dicts (skipped ones read back)."""
    cfg.validate()
    path = store_path(cfg.cache_dir, ref.model_id, ref.weights_id, dataset)
    if parts_dir(path).exists():
        raise MissingFeaturesError(f"{path} has an unfinished extraction",
                                   f"rerun: {extract_command(dataset, model_arg, pretrained_arg, cfg, {})}")
    if not path.is_file():
        raise MissingFeaturesError(f"no feature store for {dataset} at {path}",
                                   f"run: {extract_command(dataset, model_arg, pretrained_arg, cfg, {})}")
    results = []
    with open_store(path) as store:
        data = load_fit_data(store, dataset)
        hint = extract_command(dataset, model_arg, pretrained_arg, cfg, data.attrs)
        if selection_source(data, cfg) == "none" and len(cfg.candidates()) > 1:
            raise ConfigError(f"{dataset} has no few-shot val split, so {len(cfg.candidates())} alpha/beta "
                              "values cannot be chosen without the test set",
                              "pass a single --alpha (and --beta), or --no-val holdout to hold out val from train")
        for shots in cfg.shots:
            todo, done = plan_runs(data, shots, cfg)
            results += [rr.read_result(folder) for folder in done]
            if todo:
                outcomes = train_and_select(store, data, shots, todo, cfg, hint, progress)
                results += evaluate_on_test(store, data, shots, outcomes, cfg)
    return results


def plan_runs(data: FitData, shots: int, cfg: FitConfig) -> tuple[list[tuple], list[Path]]:
    """(runs to do as (seed, split, key, folder), folders of runs already done)."""
    epochs = resolve_epochs(cfg.train, shots, data.dataset)
    todo, done = [], []
    for seed, split in sample_splits(data, shots, cfg.seeds, cfg).items():
        key = rr.run_key(run_payload(data, shots, seed, cfg, epochs))
        folder = rr.run_dir(Path(cfg.results_dir), data.store.parent.parent.name, data.store.parent.name,
                            data.dataset, METHOD, shots, seed, key)
        if cfg.force or not rr.is_done(folder, key):
            todo.append((seed, split, key, folder))
        else:
            done.append(folder)
    return todo, done


def train_and_select(store: FeatureStore, data: FitData, shots: int, todo: list[tuple], cfg: FitConfig,
                     hint: str, progress: Progress | None) -> list[RunOutcome]:
    """Train every (seed, candidate) run of this shot count at once; choose per seed on val."""
    epochs = resolve_epochs(cfg.train, shots, data.dataset)
    start = time.perf_counter()
    use_aug = cfg.train.views == "aug" and data.aug_views > 0
    specs, val_sets = [], {}
    for seed, split, _, _ in todo:
        feats, labels, aug = _read(store, "train", split.train, use_aug, hint)
        views = torch.from_numpy(aug if use_aug else feats[:, None])   # (N, V, D)
        val_sets[seed] = _val_features(store, data, split, hint)
        for candidate in cfg.candidates():
            specs.append(RunSpec(seed, candidate, views, torch.from_numpy(labels)))
    tick = (lambda e, n: progress(f"{data.dataset} {shots}-shot", e, n)) if progress else None
    states = train_runs(specs, data.class_weights, data.logit_scale, replace(cfg.train, views="aug" if use_aug else "clean"),
                        epochs, cfg.device, tick)
    seconds = (time.perf_counter() - start) / len(todo)
    per_seed = len(cfg.candidates())
    outcomes = []
    for i, (seed, split, key, folder) in enumerate(todo):
        chosen, state, selection, val_metrics, zs_val = _select(
            data, specs[i * per_seed:(i + 1) * per_seed], states[i * per_seed:(i + 1) * per_seed], val_sets[seed], cfg)
        outcome = RunOutcome(seed, split, key, folder, chosen, state, selection, val_metrics, zs_val, seconds)
        outcome.extra = {"epochs": epochs, "views_used": "aug" if use_aug else "clean"}
        outcomes.append(outcome)
    return outcomes


def _val_features(store: FeatureStore, data: FitData, split: FewShotSplit, hint: str):
    """Few-shot val features (M, D) and labels, or None when there is no val."""
    if not split.val:
        return None
    source = "val" if data.val_labels else "train"   # holdout val lives in the train split
    feats, labels, _ = _read(store, source, split.val, False, hint)
    return torch.from_numpy(feats), torch.from_numpy(labels)


def _select(data: FitData, specs: list[RunSpec], states: list[dict], val, cfg: FitConfig):
    """Best candidate on val top-1 (ties: first in grid order); no val: the only candidate."""
    k = len(data.classnames)
    if val is None:
        return specs[0].adapter, states[0], {"on": "none", "candidates": [_ratios(specs[0].adapter)],
                                             "chosen": _ratios(specs[0].adapter)}, None, None
    feats, labels = val
    scored = []
    for spec, state in zip(specs, states):
        logits = predict(state, spec.adapter, feats, data.class_weights, data.logit_scale, cfg.device)
        scored.append(classification_metrics(logits, labels, k))
    best = max(range(len(specs)), key=lambda i: (scored[i]["top1"], -i))
    zs_val = classification_metrics(zero_shot_logits(feats, data.class_weights, data.logit_scale), labels, k)
    selection = {"on": selection_source(data, cfg),
                 "candidates": [{**_ratios(s.adapter), "val_top1": m["top1"]} for s, m in zip(specs, scored)],
                 "chosen": _ratios(specs[best].adapter)}
    return specs[best].adapter, states[best], selection, scored[best], zs_val


def _ratios(a: AdapterConfig) -> dict[str, float]:
    return {"alpha": a.alpha, "beta": a.beta}


def evaluate_on_test(store: FeatureStore, data: FitData, shots: int, outcomes: list[RunOutcome],
                     cfg: FitConfig) -> list[dict[str, Any]]:
    """The final evaluation: read test once, score each chosen adapter and zero-shot, write results."""
    test_feats, test_labels, _ = store.read("test")
    feats, labels = torch.from_numpy(test_feats), torch.from_numpy(test_labels)
    k = len(data.classnames)
    zs_test = classification_metrics(zero_shot_logits(feats, data.class_weights, data.logit_scale), labels, k)
    results = []
    for o in outcomes:
        test_metrics = classification_metrics(
            predict(o.state, o.chosen, feats, data.class_weights, data.logit_scale, cfg.device), labels, k)
        result = _result(data, shots, o, cfg, zs_test, test_metrics)
        rr.save_adapter(o.folder / "adapter.safetensors", o.state, data.class_weights, {
            "adapter": asdict(o.chosen), "classnames": data.classnames, "logit_scale": data.logit_scale,
            "model": _model_identity(data), "dataset": data.dataset, "shots": shots, "seed": o.seed,
            "classifier": data.classifier})
        rr.write_result(o.folder, result)
        results.append(result)
    return results


def _model_identity(data: FitData) -> dict[str, Any]:
    keys = ("model", "model_config_sha256", "pretrained", "weights_sha256", "quick_gelu", "preprocess", "checkpoint_path")
    return {k: data.attrs.get(k) for k in keys}


def _pretrained_label(data: FitData) -> str:
    p = data.attrs.get("pretrained")
    return f"file:{data.attrs.get('weights_sha256', '')[:12]}" if p == "file" else p


def _result(data: FitData, shots: int, o: RunOutcome, cfg: FitConfig,
            zs_test: dict, test_metrics: dict) -> dict[str, Any]:
    diffs = protocol_differences(data, cfg, shots, o.extra["views_used"])
    return {
        "schema": rr.RESULT_SCHEMA, "run_key": o.key, "method": METHOD, "dataset": data.dataset,
        "shots": shots, "seed": o.seed, "model": data.attrs.get("model"), "pretrained": _pretrained_label(data),
        "config": {
            "adapter": {k: v for k, v in asdict(cfg.adapter).items() if k not in ("alpha", "beta")},
            "alphas": list(cfg.alphas), "betas": list(cfg.betas),
            "train": {**asdict(cfg.train), "epochs": o.extra["epochs"]},
            "train_views": (f"one of {data.aug_views} cached augmented views per image per epoch"
                            if o.extra["views_used"] == "aug" else "the clean (val-transform) view every epoch"),
            "classifier": data.classifier, "no_val": cfg.no_val, "device": cfg.device,
        },
        "selection": o.selection,
        "store": {"path": str(data.store), "attrs": data.attrs},
        "versions": rr.environment(),
        "fewshot": {"train_paths": [data.train_paths[i] for i in o.split.train],
                    "val_paths": [(data.val_paths if data.val_labels else data.train_paths)[i] for i in o.split.val],
                    "val_source": selection_source(data, cfg)},
        "protocol": {"matches_paper": not diffs, "differences": diffs},
        "zero_shot": {"val": o.zero_shot_val, "test": zs_test},
        "metrics": {"val": o.val_metrics, "test": test_metrics},
        "adapter_file": "adapter.safetensors",
        "wall_time_s": round(o.seconds, 3),
    }


def stores_for(ref: ModelRef, cache_dir: str | Path) -> list[str]:
    """Datasets that have a store for this model and weights."""
    folder = Path(cache_dir) / ref.model_id / ref.weights_id
    names = sorted(p.stem for p in folder.glob("*.h5")) if folder.is_dir() else []
    if not names:
        raise StoreError(f"no feature stores under {folder}", "run `cacheclip extract --dataset ...` first")
    return names
