"""cacheclip: few-shot CLIP adaptation on cached open_clip features.

The stable Python API is what ``__all__`` lists (``cacheclip.api`` for stores, fits and results;
the method contract for plugins: ``Method`` and the names beside it, ``cacheclip.fit.trainer``
for gradient-trained methods, ``cacheclip.testing`` for their tests). Everything else is
internal. The names load on first use, so ``import cacheclip`` (and ``cacheclip --help``) stays
light: no torch until a name that needs it is touched.
"""

from importlib import import_module

_PUBLIC = {
    # stores, fits and results (cacheclip.api)
    "open_store": "cacheclip.api",
    "store_path": "cacheclip.api",
    "Store": "cacheclip.api",
    "Split": "cacheclip.api",
    "run_fit": "cacheclip.api",  # not "fit": that name is the cacheclip.fit stage
    "load_results": "cacheclip.api",
    "result_rows": "cacheclip.api",
    "results_frame": "cacheclip.api",
    # the methods and their contract (docs: writing-a-method)
    "list_methods": "cacheclip.fit.methods",
    "get_method": "cacheclip.fit.methods",
    "CONTRACT_VERSION": "cacheclip.fit.methods",
    "Method": "cacheclip.fit.methods",
    "FitContext": "cacheclip.fit.methods",
    "FitData": "cacheclip.fit.methods",
    "RunPlan": "cacheclip.fit.methods",
    "Trained": "cacheclip.fit.methods",
    "NewClassRule": "cacheclip.fit.methods.base",
    "zero_shot_on_new": "cacheclip.fit.methods.base",
    "artifact_on_new": "cacheclip.fit.methods.base",
    "select_on_val": "cacheclip.fit.methods.base",
    "zero_shot_predictor": "cacheclip.fit.methods.base",
    "view_differences": "cacheclip.fit.methods.base",
    "classification_metrics": "cacheclip.fit.metrics",
    "setting": "cacheclip.settings",
    # errors a caller may catch: every one has a message and a hint (``.hint``)
    "CacheClipError": "cacheclip.errors",
    "ConfigError": "cacheclip.errors",
}
__all__ = ["__version__", *_PUBLIC]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~40 ms: only when asked

    try:
        return version("cacheclip")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        globals()[name] = _version()
        return globals()[name]
    if name not in _PUBLIC:
        raise AttributeError(f"module 'cacheclip' has no attribute '{name}'")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
