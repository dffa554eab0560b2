"""Hugging Face Hub settings read at call time (huggingface_hub reads its environment only at import), and a
quick check that the Hub can be reached before anything waits on its timeouts."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def offline_requested() -> bool:
    """Whether HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for offline mode now."""
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub (HF_ENDPOINT, default huggingface.co) opens within `timeout` s."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def cached_on_this_machine(repo_id: str, filename: str = "model_index.json") -> bool:
    """Whether the Hub cache here already holds `filename` of `repo_id` (then nothing needs the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # noqa: BLE001 - an id the cache cannot even parse is not cached
        return False


def local_files_only(model: str) -> bool:
    """For a Hub id: True when it must come from this machine's cache (offline mode, or already cached);
    InputError at once, rather than after the Hub's timeouts, when it is neither cached nor reachable."""
    if offline_requested() or cached_on_this_machine(model):
        return True
    if not hub_reachable():
        from .image_io import InputError

        raise InputError(f"model {model!r} is not a local folder and the Hugging Face Hub cannot be reached from "
                         f"here: pass --model with a diffusers folder (save one where there is a network with "
                         f"pipe.save_pretrained(FOLDER)), or connect")
    return False
