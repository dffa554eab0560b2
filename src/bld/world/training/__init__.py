"""Training the bundled SD-format model of the synthetic world (bld.world).

- `tokenizer`: a word-level CLIP tokenizer covering the caption grammar.
- `configs`: the VAE, UNet, CLIP and scheduler configurations.
- `train_vae`: `python -m bld.world.training.train_vae --out DIR --steps N --batch B --seed S [--resume]`.
- `train_unet`: `python -m bld.world.training.train_unet --vae DIR --out DIR --steps N ... [--resume]`, and
  `export_pipeline` that writes a standard diffusers StableDiffusionPipeline folder plus `clip/`.

Shared helpers (this module): world batches as tensors, EMA, JSONL logging, atomic folders and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..scenes import sample_batch


def world_images(seed: int, start: int, n: int, **scene_kwargs) -> tuple[torch.Tensor, list[str]]:
    """Items start..start+n-1 of the world stream `seed` as a (n, 3, 64, 64) tensor in [-1, 1] and their
    training captions (full, object or background, as bld.world.training_caption draws them)."""
    items = sample_batch(seed, n, start=start, training_captions=True, **scene_kwargs)
    arr = np.stack([np.asarray(im, dtype=np.float32) for im, _, _ in items])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x.contiguous(), [c for _, c, _ in items]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) over a batch of images in [-1, 1], measured on the [0, 1] scale."""
    a = ((a.clamp(-1, 1) + 1) / 2).float()
    b = ((b.clamp(-1, 1) + 1) / 2).float()
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


class EMA:
    """Exponential moving average of a module's parameters (and a copy of its buffers)."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up: early averages follow the model closely
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.clone() for k, v in state.items()}


class JsonlLog:
    """Appends one JSON object per line (with wall time) to a file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        record = {"time": round(time.time(), 2), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def rewind(self, step: int) -> None:
        """Drop the records of steps after `step`: a run resumed from a checkpoint at `step` redoes them."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines(keepends=True)
                if json.loads(line).get("step", -1) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


@contextlib.contextmanager
def folder_written_atomically(folder: str | Path) -> Iterator[Path]:
    """Yield an empty sibling folder to write into; when the block ends without an error it takes the place
    of `folder` (the previous contents stay until then), and when it fails it is removed."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(folder: str | Path, *, models: dict[str, torch.nn.Module], state: dict,
                    meta: dict) -> Path:
    """Write `folder` atomically: each model with save_pretrained into `folder/<name>` (safetensors),
    `training_state.pt` (optimizer, EMA, RNG: torch.save) and `meta.json` (step and settings).
    The previous checkpoint stays until the new one is complete."""
    with folder_written_atomically(folder) as tmp:
        for name, model in models.items():
            model.save_pretrained(tmp / name, safe_serialization=True)
        torch.save(state, tmp / "training_state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return Path(folder)


def load_checkpoint_state(folder: str | Path) -> tuple[dict, dict]:
    """(meta, training state) of a checkpoint written by `save_checkpoint`."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    state = torch.load(folder / "training_state.pt", weights_only=False)
    return meta, state
