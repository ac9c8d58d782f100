"""Stage 1, features: images and class names -> HDF5 feature stores.

Owns: ``models`` (the only open_clip import: loading, encoding), ``augment`` (the cached
augmented views), ``pipeline`` (decoding and batching images), ``cpu_plan`` (where a CPU
forward runs), ``extract`` (the extract stage), ``store`` and ``parts``
(the only h5py imports: the HDF5 store and its chunk files),
``distributed`` (torchrun sharding), ``export`` and ``locate``. May import ``datasets``,
``errors`` and ``common``; never ``fit``, ``results`` or ``batch``.
"""
