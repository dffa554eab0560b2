"""Which model bld uses when none is given, and the edit settings a model folder recommends for itself.

A model folder may hold EDIT_DEFAULTS_FILE, a JSON object of EditParams fields measured best for that model
(the bundled model's world differs from photos: see README, "The bundled model"). Those values replace
EditParams' defaults, which follow the paper; values the user gives always win. This module stays light
(no torch), so the CLI can read it while it builds its help.
"""

from __future__ import annotations

import json
from pathlib import Path

from .image_io import InputError
from .params import EditParams

TINY_RANDOM = "tiny-random"
BUNDLED_MODEL_DIR = Path(__file__).parent / "world" / "bundled_model"
EDIT_DEFAULTS_FILE = "bld_edit_defaults.json"


def default_model() -> str:
    """The bundled model when the package ships one, else the tiny random components."""
    return str(BUNDLED_MODEL_DIR) if (BUNDLED_MODEL_DIR / "model_index.json").is_file() else TINY_RANDOM


def model_edit_defaults(model: str | None) -> dict:
    """The EditParams values that `model` (None: the default model) recommends; {} when it is not a local
    folder with EDIT_DEFAULTS_FILE. InputError when the file is not a JSON object of valid EditParams fields."""
    path = Path(model or default_model()) / EDIT_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("it must hold a JSON object of edit parameters")
        EditParams.from_dict(values)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise InputError(f"{path}: {' '.join(str(exc).split())}; fix or delete the file") from None
    return values
