"""Stage 0, datasets: names and aliases, CoOp's on-disk layouts and split files, few-shot
sampling, prompt templates, and generated datasets for tests and the demo.

Owns: ``catalog`` (the dataset registry, names, data roots), ``layouts`` (reading each
split format: ``load_dataset``), ``fewshot`` (CoOp/Dassl's sampling), ``templates``,
``synthetic``. May import only ``cacheclip.errors`` and ``cacheclip.common``: no torch,
open_clip or h5py, and nothing of the later stages.
"""
