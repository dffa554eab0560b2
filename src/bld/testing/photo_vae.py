"""A small AutoencoderKL trained in seconds on photographs shipped with scikit-image.

Its reconstruction D(E(x)) of a held-out photo is imperfect (about 24 dB), as the paper's background
reconstruction premise needs, which a random tiny VAE is not. Used by the reconstruction tests and
benchmark.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from skimage import data as skdata

PHOTO_VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                 norm_num_groups=16, mid_block_add_attention=False)
PHOTO_TRAINING = dict(iters=300, batch=8, crop=32, lr=2e-3, kl_weight=1e-6, seed=0)
TRAINING_PHOTOS = ("astronaut", "chelsea", "rocket", "motorcycle")  # coffee is held out


def photo(name: str) -> torch.Tensor:
    """A scikit-image photograph as a (1, 3, H, W) float32 tensor in [-1, 1]."""
    array = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()[..., :3]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() / 127.5 - 1


def train_photo_vae(folder: str | Path | None = None, **training) -> AutoencoderKL:
    """PHOTO_VAE trained as a plain autoencoder (posterior mean, MSE, a tiny KL term) on random crops of
    TRAINING_PHOTOS with Adam and a one-cycle schedule; about 25 s on 2 CPU cores. When `folder` holds a
    model saved for the same settings it is loaded instead; a trained one is saved there."""
    settings = {**PHOTO_TRAINING, **training}
    key = hashlib.sha256(json.dumps([PHOTO_VAE, settings, TRAINING_PHOTOS, diffusers.__version__],
                                    sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = None if folder is None else Path(folder) / key
    if folder is not None and (folder / "config.json").exists():
        return AutoencoderKL.from_pretrained(folder).eval()
    torch.manual_seed(settings["seed"])
    vae = AutoencoderKL(**PHOTO_VAE)
    photos = [photo(name)[0] for name in TRAINING_PHOTOS]
    rng = np.random.default_rng(settings["seed"])
    crop, iters = settings["crop"], settings["iters"]
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings["lr"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings["lr"], total_steps=iters,
                                                   pct_start=0.1)
    vae.train()
    for _ in range(iters):
        batch = []
        for _ in range(settings["batch"]):
            image = photos[rng.integers(len(photos))]
            top, left = rng.integers(image.shape[1] - crop), rng.integers(image.shape[2] - crop)
            batch.append(image[:, top:top + crop, left:left + crop])
        batch = torch.stack(batch)
        posterior = vae.encode(batch).latent_dist
        loss = F.mse_loss(vae.decode(posterior.mode()).sample, batch) + settings["kl_weight"] * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    optimizer.zero_grad(set_to_none=True)
    vae.eval()
    if folder is not None:
        vae.save_pretrained(folder)
    return vae


def pasted_edit(vae, original: torch.Tensor, other: torch.Tensor, mask: torch.Tensor):
    """A decoded edit: `other` pasted into `original` inside `mask`, through the VAE, as a decoded result would
    be. Returns (edited, latents); images (1, 3, H, W) in [-1, 1], mask (1, 1, H, W) in {0, 1}."""
    from ..ops.reconstruction import decode, encode_mean

    latents = encode_mean(vae, original * (1 - mask) + other * mask)
    with torch.no_grad():
        edited = decode(vae, latents)
    return edited, latents
