"""A batch: every dataset x model of a ``BatchConfig``, extracted then fitted, resumably.

``plan_batch`` says what is done and what is left without building any model
(stores and results on disk, ``resolve_model`` only). ``run_batch`` works
through the plan one (model, dataset) unit at a time: extract what the store
lacks (each model is loaded once, and only when some store needs it), then
fit shot count by shot count. Finished runs are skipped by their run key, so
rerunning after a crash, kill or Ctrl-C continues where it stopped. A unit that
fails is recorded with its error and the exact command to retry it; the batch
carries on unless ``fail_fast``. Progress goes to a callback, text to ``log``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from cacheclip.batch.config import BatchConfig, ModelSpec, load_config, read_config_file, to_command, write_resolved
from cacheclip.errors import CacheClipError

__all__ = [
    "BatchConfig",
    "ModelSpec",
    "load_config",
    "read_config_file",
    "to_command",
    "PlanItem",
    "plan_batch",
    "Outcome",
    "BatchSummary",
    "run_batch",
    "BatchLog",
    "open_log",
    "DATASETS",
    "RUNS",
    "error_message",
]

Progress = Callable[[str, int, int], None]  # (stage, done, total)
Log = Callable[[str], None]
DATASETS = "datasets"  # progress stage: (model, dataset) units finished
RUNS = "runs"  # progress stage: runs trained in this batch, of those left at the start


@dataclass
class PlanItem:
    """One (model, dataset) unit: what extraction still has to do and how many runs are done."""

    model: ModelSpec
    dataset: str  # canonical name as asked (coop name or imagefolder:PATH)
    store_name: str = ""  # the store's dataset name (differs for image folders)
    store: Path | None = None
    ref: Any = None  # the resolved models.ModelRef
    extract: str = ""  # what extraction still has to do, in words; "" when nothing
    runs_total: int = 0
    runs_done: int = 0
    error: BaseException | None = None

    @property
    def runs_left(self) -> int:
        return self.runs_total - self.runs_done


@dataclass
class Outcome:
    """How one (model, dataset) unit of a batch ended."""

    model: ModelSpec
    dataset: str
    status: str = "not run"  # ok | failed | not run (after --fail-fast)
    runs_new: int = 0  # trained now
    runs_skipped: int = 0  # already done before
    encoded: int = 0  # images encoded now
    error: str = ""
    hint: str = ""
    retry: str = ""  # the command that retries this unit alone
    seconds: float = 0.0
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BatchSummary:
    config: BatchConfig
    outcomes: list[Outcome]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(o.status == "ok" for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def results(self) -> list[dict[str, Any]]:
        return [r for o in self.outcomes for r in o.results]


# ---------------------------------------------------------------- configs of the stages


def extract_config(config: BatchConfig):
    """The batch's extract config; a hold-out val is encoded when the fit grid holds one out."""
    return replace(config.extract, holdout_val=config.fit.no_val == "holdout")


def fit_config(config: BatchConfig, method: str, device: str = "cpu"):
    """The batch's fit grid for one method, with that method's settings."""
    return replace(config.fit, method=method, method_config=config.method_config(method), device=device)


# ---------------------------------------------------------------- planning (no model built)


def plan_batch(config: BatchConfig) -> list[PlanItem]:
    """Every (model, dataset) unit with what is left to do; errors of a unit are recorded,
    not raised. The config is validated as the real run validates it."""
    from cacheclip.features.locate import resolve_remembered

    config.validate()
    items = []
    for spec in config.models:
        try:
            ref, error = resolve_remembered(spec.model, spec.pretrained, config.cache_dir), None
        except Exception as e:
            ref, error = None, e
        for name in config.dataset_names():
            item = PlanItem(spec, name, runs_total=len(config.shots) * len(config.seeds) * len(config.methods))
            try:
                if error is not None:
                    raise error
                _plan_unit(item, ref, config)
            except Exception as e:
                item.error = e
            items.append(item)
    return items


def _plan_unit(item: PlanItem, ref, config: BatchConfig) -> None:
    from cacheclip.datasets.layouts import load_dataset
    from cacheclip.features.store import store_path

    ds = load_dataset(item.dataset, Path(config.root) if config.root else None)
    item.store_name, item.ref = ds.name, ref
    item.store = store_path(config.cache_dir, ref.model_id, ref.weights_id, ds.name)
    item.extract = extract_todo(ds, item.store, ref, config)
    if item.store.is_file():
        item.runs_done = sum(len(done_runs(item.store, ds.name, fit_config(config, m))) for m in config.methods)


def extract_todo(ds, path: Path, ref, config: BatchConfig) -> str:
    """What ``extract_dataset`` would still do for this store, in words ("" when nothing).

    Checks what can be checked without the model: the store exists, has no unfinished
    chunks, carries the identity this batch would give it (split file, model, weights,
    dtype, precision, augmentation) and the same templates, and holds every item the
    planned runs need. A differing identity is left to ``extract_dataset`` to report.
    """
    from cacheclip.datasets.templates import store_templates
    from cacheclip.features.extract import items_to_encode, store_identity
    from cacheclip.features.store import check_identity, open_store, parts_dir

    cfg = extract_config(config)
    if not path.is_file():
        return "store missing"
    if parts_dir(path).exists():
        return "unfinished extraction"
    # all of the identity but `preprocess` (needs the model) and `precision` (a store encoded
    # on a GPU serves a CPU fit as it is; its results record the precision)
    wanted = {k: v for k, v in store_identity(ds, ref, cfg, "fp32").items() if k != "precision"}
    with open_store(path) as store:
        check_identity(path, store.attrs, wanted)  # the error the real extraction would give
        have = {s: set(store.encoded(s).tolist()) for s in store.splits}
        missing = {s: len(items) for s, items in items_to_encode(ds, cfg, have).items()}
        text = store.templates != list(store_templates(cfg.templates, ds.name))
    todo = [f"{s} {n}" for s, n in missing.items() if n]
    return ", ".join((["encode " + ", ".join(todo)] if todo else []) + (["text"] if text else []))


def done_runs(store: Path, store_name: str, cfg) -> set[str]:
    """Run keys of ``cfg``'s runs on this store whose results exist."""
    from cacheclip.features.store import open_store
    from cacheclip.fit.stage import load_fit_data, plan_runs
    from cacheclip.results.runs import read_result

    with open_store(store) as s:
        data = load_fit_data(s, store_name, cfg)
    return {read_result(folder)["run_key"] for shots in cfg.shots for folder in plan_runs(data, shots, cfg)[1]}


# ---------------------------------------------------------------- running


class _Models:
    """Loads each model at most once, when a store first needs it; remembers a failed load."""

    def __init__(self, device: str, log: Log):
        self.device, self.log, self.spec, self.value = device, log, None, None
        self.warnings: list[str] = []

    def get(self, spec: ModelSpec):
        from cacheclip.features.models import load_model, settle_process

        if spec != self.spec:
            self.spec, self.value = spec, None  # drop the previous model before loading the next
            start = time.perf_counter()
            try:
                self.value = load_model(spec.model, spec.pretrained, device=self.device)
                settle_process(self.device)
                self.log(f"[{spec.label}] model loaded on {self.device} in {time.perf_counter() - start:.1f}s")
                for w in self.value.warnings:
                    self.log(f"[{spec.label}] warning: {w}")
                    self.warnings.append(w)
            except Exception as e:
                self.value = e
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def run_batch(config: BatchConfig, progress: Progress | None = None, log: Log | None = None) -> BatchSummary:
    """Run every unit of ``config``; failures are recorded in the summary, never raised
    (KeyboardInterrupt is: rerun the same batch to continue)."""
    config.validate()
    start = time.perf_counter()
    runner = _Runner(config, progress, log)
    runner.say(f"batch: {to_command(config)}")
    if isinstance(log, BatchLog):
        runner.say(f"resolved configuration: {write_resolved(config, log.path.with_suffix('.config.json'))}")
    plan = plan_batch(config)
    for item in plan:
        runner.say(
            f"[{item.model.label} {item.dataset}] plan: "
            + (
                f"error: {error_message(item.error)}"
                if item.error
                else f"extract: {item.extract or 'up to date'}; runs done {item.runs_done}/{item.runs_total}"
            )
        )
    runner.runs_left = sum(i.runs_left for i in plan if i.error is None)
    runner.tick(DATASETS, 0, len(plan))
    runner.tick(RUNS, 0, runner.runs_left)
    outcomes = [
        Outcome(i.model, i.dataset, retry=to_command(config, datasets=[i.dataset], models=(i.model,))) for i in plan
    ]
    try:
        for n, (item, outcome) in enumerate(zip(plan, outcomes, strict=False)):
            runner.unit(item, outcome)
            runner.tick(DATASETS, n + 1, len(plan))
            if outcome.status == "failed" and config.fail_fast:
                runner.say("fail-fast: stopping at the first failure")
                break
    except KeyboardInterrupt:
        runner.say("interrupted: finished runs are kept; rerun the same command to continue")
        raise
    summary = BatchSummary(config, outcomes, runner.models.warnings, time.perf_counter() - start)
    _log_summary(summary, runner.say)
    return summary


class _Runner:
    """Runs plan items: extract when the store needs it, then fit shot by shot (method by method)."""

    def __init__(self, config: BatchConfig, progress: Progress | None, log: Log | None):
        from cacheclip.features.models import resolve_device

        self.config, self.device = config, resolve_device(config.device)
        self.tick: Progress = progress or (lambda stage, done, total: None)
        self.say: Log = log or (lambda line: None)
        self.models = _Models(self.device, self.say)
        self.runs_left, self.runs_done = 0, 0

    def unit(self, item: PlanItem, outcome: Outcome) -> None:
        """Extract and fit one (model, dataset); any failure is recorded in ``outcome``."""
        tag, start = f"[{item.model.label} {item.dataset}]", time.perf_counter()
        self.say(f"{tag} start")
        try:
            if item.error is not None:
                raise item.error
            if item.extract:
                self.extract(item, outcome, tag)
            for shots in self.config.shots:
                for method in self.config.methods:
                    self.fit(item, outcome, method, shots, tag)
            outcome.status = "ok"
            self.say(
                f"{tag} done: {outcome.runs_new} runs trained, {outcome.runs_skipped} already done, "
                f"{time.perf_counter() - start:.1f}s"
            )
        except Exception as e:
            outcome.status, outcome.error = "failed", error_message(e)
            outcome.hint = e.hint if isinstance(e, CacheClipError) else ""
            self.say(f"{tag} FAILED: {outcome.error}")
            self.say("".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
        outcome.seconds = time.perf_counter() - start

    def extract(self, item: PlanItem, outcome: Outcome, tag: str) -> None:
        from cacheclip.features.extract import extract_dataset

        self.say(f"{tag} extract start: {item.extract}")
        loaded = self.models.get(item.model)

        def stage(split: str, done: int, total: int) -> None:
            self.tick(f"{item.dataset} extract {split} · {item.model.label}", done, total)

        root = Path(self.config.root) if self.config.root else None
        done = extract_dataset(item.dataset, root, loaded, extract_config(self.config), progress=stage)
        outcome.encoded = sum(done.encoded.values())
        self.say(f"{tag} extract done: encoded {outcome.encoded} images in {done.seconds:.1f}s")

    def fit(self, item: PlanItem, outcome: Outcome, method: str, shots: int, tag: str) -> None:
        from cacheclip.fit.stage import fit_dataset

        cfg = replace(fit_config(self.config, method, self.device), shots=(shots,))
        if item.store_name != "imagenet":  # targets are ImageNet's variants: other datasets have none
            cfg = replace(cfg, targets=())
        before = done_runs(item.store, item.store_name, cfg) if item.store and item.store.is_file() else set()
        start = time.perf_counter()

        def stage(what: str, done: int, total: int) -> None:
            self.tick(f"{what} {method} · {item.model.label}", done, total)

        results = fit_dataset(
            dataset=item.store_name,
            ref=item.ref,
            cfg=cfg,
            model_arg=item.model.model,
            pretrained_arg=item.model.pretrained,
            progress=stage,
        )
        new = sum(r.get("run_key") not in before for r in results)
        outcome.runs_new += new
        outcome.runs_skipped += len(results) - new
        outcome.results += results
        self.runs_done += new
        self.tick(RUNS, min(self.runs_done, self.runs_left), self.runs_left)
        self.say(
            f"{tag} fit {method} {shots}-shot: {new} trained, {len(results) - new} already done "
            f"({time.perf_counter() - start:.1f}s)"
        )


def error_message(e: BaseException | None) -> str:
    if isinstance(e, CacheClipError):
        return e.message
    return f"unexpected {type(e).__name__}: {e}"


def _log_summary(summary: BatchSummary, say: Log) -> None:
    ok = [o for o in summary.outcomes if o.status == "ok"]
    say(
        f"summary: {len(ok)} ok, {len(summary.failed)} failed, "
        f"{sum(o.status == 'not run' for o in summary.outcomes)} not run, in {summary.seconds:.1f}s"
    )
    for o in summary.failed:
        say(f"  failed {o.model.label} {o.dataset}: {o.error}")
        say(f"    retry: {o.retry}")


# ---------------------------------------------------------------- the log file


class BatchLog:
    """Plain-text log: one timestamped line per message, flushed at once (a kill loses nothing)."""

    def __init__(self, path: Path):
        self.path = path
        self._file: TextIO = open(path, "a", encoding="utf-8")

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in message.splitlines() or [""]:
            self._file.write(f"{stamp} {line}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> BatchLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_log(results_dir: str | Path) -> BatchLog:
    """A new ``<results>/batch-<YYYYmmdd-HHMMSS>.log`` (a suffix keeps two batches apart)."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"batch-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = folder / f"{stem}.log", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.log"
    return BatchLog(path)
