"""Identity profiles: a person's checked photos, head crops and embeddings, kept on disk.

:mod:`~studio.profiles.library` holds the operations (create, add, remove, delete, list, get),
:mod:`~studio.profiles.store` the SQLite schema and migrations, :mod:`~studio.profiles.intake`
the photo intake, :mod:`~studio.profiles.selection` the outlier and face-choice rules, and
:mod:`~studio.profiles.names` the naming rules.
"""
