"""Hugging Face Hub settings read at call time (huggingface_hub reads its environment only at import)."""

from __future__ import annotations

import os


def offline_requested() -> bool:
    """Whether HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for offline mode now."""
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
