"""Stage 3, results: run files and what is made of them.

Owns: ``runs`` (a run's folder, key, result JSON and artifact file), ``loading`` (reading
result files back), ``report`` (tables), ``plots`` (the figure), ``published`` (the papers'
numbers). May import ``datasets``, ``errors`` and ``common``; never ``features``' extraction,
``fit`` or ``batch``.
"""
