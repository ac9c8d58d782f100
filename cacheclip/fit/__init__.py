"""Stage 2, fit: feature stores -> few-shot runs, selected on val, tested once.

Owns: ``adapters`` and ``train`` (CLIP-Adapter's math and batched trainer), ``methods``
(the method registry: each method one module with its own config), ``metrics``,
``stage`` (the fit stage: plan runs, train, select on val, read test once, write results)
and ``predict``. May import ``datasets``, ``features.store`` and ``features.models`` (never
the extraction code), ``results.runs`` (to write run files), ``errors`` and ``common``.
"""
