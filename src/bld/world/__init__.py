"""The synthetic world of colored shapes and the bundled model trained on it.

- `scenes`: the seeded world (scenes, captions, edit tasks) that everything below is made from.
- `judge`: a classifier trained on ground-truth renders that says whether an edit did what it was asked.
- `demo`: the scene `bld demo` edits.
- `training`: the recipes that trained the bundled model (`bundled_model/`, a diffusers folder).
- `evaluation`: `bld eval`, the paper's protocol measured on the world.

The library knows this package only through the path of `bundled_model/` (`bld.model_defaults`).
"""
