"""Background reconstruction methods (PAPER.md section 2): quality and cost, relative to one decode.

Part 1, quality and time: a 256 px crop of a real photograph (scikit-image `coffee`, held out from the
VAE's training) with a square mask of 1/4 of the side, replaced by a piece of `astronaut` and passed
through a small VAE trained on photographs (the one of tests/test_reconstruction.py, cached where
pytest caches it; trained here in about 25 s when absent). Every method runs for real; the table gives
its time, its time over one decode, the background PSNR (outside the mask), the background PSNR
inside the crop box, and the PSNR inside the mask against the edit.

Part 2, time only: the real-size SD 1.5 VAE architecture with random weights (`bld.reference_
architectures`), same image size. A 75-step optimization there takes minutes on a CPU, so each
optimizing method runs `--sd-steps` steps and its 75-step time is estimated as one decode plus 75 times
the measured time per step.

    python benchmarks/bench_reconstruction.py                # about 3 minutes on 2 CPU cores
    python benchmarks/bench_reconstruction.py --sd-steps 0   # part 1 only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL

from bld.ops.reconstruction import crop_box, decode, encode_mean, psnr, reconstruct_background, vae_scale_factor
from bld.testing.photo_vae import pasted_edit, photo, train_photo_vae
from bld.testing.reference_architectures import SD_VAE, random_init_

ROOT = Path(__file__).resolve().parents[1]


def scene(vae, size: int):
    """(original, edited, latents, mask): a held-out photo, a centred-left square of size/4 replaced."""
    original = photo("coffee")[..., 100:100 + size, 200:200 + size]
    other = photo("astronaut")[..., 180:180 + size, 150:150 + size]
    side = size // 4
    top, left = (size - side) // 2, (size - side) // 3
    mask = torch.zeros(1, 1, size, size)
    mask[..., top:top + side, left:left + side] = 1
    edited, latents = pasted_edit(vae, original, other, mask)
    return original, edited, latents, mask


def finite(value: float) -> float | str:
    """JSON has no infinity: an exact match (infinite PSNR) is written as "inf"."""
    return value if math.isfinite(value) else "inf"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def decode_time(vae, latents, repeats: int = 2) -> float:
    with torch.no_grad():
        decode(vae, latents)  # warm-up
        return min(timed(lambda: decode(vae, latents))[1] for _ in range(repeats))


def part1(args) -> dict:
    vae = train_photo_vae(args.vae_cache)
    original, edited, latents, mask = scene(vae, args.size)
    f = vae_scale_factor(vae)
    top, bottom, left, right = crop_box(mask[0, 0] > 0, args.crop_margin, f)
    in_crop_bg = torch.zeros_like(mask, dtype=torch.bool)
    in_crop_bg[..., top:bottom, left:right] = True
    in_crop_bg &= mask == 0
    one_decode = decode_time(vae, latents)
    runs = [("none", "none", {}), ("pixel", "pixel", {}), ("pixel feather 4", "pixel", dict(feather=4)),
            ("poisson", "poisson", {}), ("latent", "latent", {}), ("decoder", "decoder", {}),
            ("decoder crop", "decoder", dict(crop=True, crop_margin=args.crop_margin))]
    if args.long_steps:
        runs += [(f"decoder {args.long_steps} steps", "decoder", dict(steps=args.long_steps)),
                 (f"decoder crop {args.long_steps} steps", "decoder",
                  dict(steps=args.long_steps, crop=True, crop_margin=args.crop_margin))]
    print(f"Part 1: small photo VAE (factor {f}, D(E(x)) "
          f"{psnr(decode(vae, encode_mean(vae, original)).detach(), original):.1f} dB), {args.size} px, mask "
          f"{int(mask.sum())} px, crop box {bottom - top}x{right - left} px; one decode {one_decode * 1000:.1f} ms")
    print(f"{'method':24s} {'time s':>8s} {'x decode':>9s} {'bg dB':>7s} {'bg in crop dB':>14s} {'in vs edit dB':>14s}")
    rows = {}
    for name, method, kwargs in runs:
        result, seconds = timed(lambda: reconstruct_background(method, original, edited, mask, vae=vae,
                                                               latents=latents, **kwargs))
        row = {"s": round(seconds, 3), "x_decode": round(seconds / one_decode, 1),
               "bg_psnr": round(psnr(result, original, mask == 0), 2),
               "bg_psnr_in_crop": round(psnr(result, original, in_crop_bg), 2),
               "inside_psnr_vs_edit": round(psnr(result, edited, mask == 1), 2)}
        rows[name] = row
        print(f"{name:24s} {row['s']:8.2f} {row['x_decode']:9.1f} {row['bg_psnr']:7.2f} "
              f"{row['bg_psnr_in_crop']:14.2f} {row['inside_psnr_vs_edit']:14.2f}", flush=True)
    full, crop = rows["decoder"], rows["decoder crop"]
    print(f"decoder fine-tune, crop vs full image: time ratio {crop['s'] / full['s']:.2f}, background PSNR "
          f"{crop['bg_psnr']} vs {full['bg_psnr']} dB (in the crop box {crop['bg_psnr_in_crop']} vs "
          f"{full['bg_psnr_in_crop']} dB)")
    return {"decode_s": round(one_decode, 4), "crop_box": [top, bottom, left, right], "methods": rows,
            "crop_over_full_time": round(crop["s"] / full["s"], 3)}


def part2(args) -> dict:
    with init_empty_weights():
        vae = AutoencoderKL(**SD_VAE)
    vae = random_init_(vae)
    f = vae_scale_factor(vae)
    size = args.size
    original = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    side = size // 4
    top, left = (size - side) // 2, (size - side) // 3
    mask[..., top:top + side, left:left + side] = 1
    latents = torch.randn(1, 4, size // f, size // f, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        edited = decode(vae, latents)
    box = crop_box(mask[0, 0] > 0, args.crop_margin, f)
    crop_latents = latents[..., box[0] // f:box[1] // f, box[2] // f:box[3] // f]
    full_decode, crop_decode = decode_time(vae, latents, 1), decode_time(vae, crop_latents, 1)
    print(f"\nPart 2: SD 1.5 VAE architecture (random weights, timing only), {size} px; one decode "
          f"{full_decode:.2f} s, crop box {box[1] - box[0]}x{box[3] - box[2]} px decode {crop_decode:.2f} s")
    print(f"{'method':24s} {'s/step':>8s} {'75 steps s (est.)':>18s} {'x decode':>9s}")
    rows = {}
    for name, method, kwargs, base in (("pixel", "pixel", {}, 0.0), ("poisson", "poisson", {}, 0.0),
                                       ("latent", "latent", dict(steps=args.sd_steps), full_decode),
                                       ("decoder", "decoder", dict(steps=args.sd_steps), full_decode),
                                       ("decoder crop", "decoder", dict(steps=args.sd_steps, crop=True,
                                                                        crop_margin=args.crop_margin), crop_decode)):
        _, seconds = timed(lambda: reconstruct_background(method, original, edited, mask, vae=vae, latents=latents,
                                                          **kwargs))
        if "steps" in kwargs:
            per_step = max(seconds - base, 0.0) / args.sd_steps
            total = base + 75 * per_step
        else:
            per_step, total = None, seconds
        rows[name] = {"s_per_step": None if per_step is None else round(per_step, 3), "s_75_steps": round(total, 2),
                      "x_decode": round(total / full_decode, 2)}
        step_text = "-" if per_step is None else f"{per_step:.2f}"
        print(f"{name:24s} {step_text:>8s} {total:18.1f} {total / full_decode:9.2f}", flush=True)
    ratio = rows["decoder crop"]["s_75_steps"] / rows["decoder"]["s_75_steps"]
    print(f"decoder fine-tune, crop vs full image (75 steps, estimated): time ratio {ratio:.2f}")
    return {"decode_s": round(full_decode, 3), "crop_decode_s": round(crop_decode, 3), "measured_steps": args.sd_steps,
            "methods": rows, "crop_over_full_time": round(ratio, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--crop-margin", type=int, default=32)
    parser.add_argument("--long-steps", type=int, default=0,
                        help="also run the decoder fine-tune for this many steps (full and crop) in part 1")
    parser.add_argument("--sd-steps", type=int, default=2,
                        help="optimization steps measured per method on the SD 1.5 VAE architecture; 0 skips part 2")
    parser.add_argument("--vae-cache", default=str(ROOT / ".pytest_cache" / "d" / "bld-photo-vae"),
                        help="folder of the trained photo VAE (shared with the tests)")
    args = parser.parse_args()

    result = {"benchmark": "bld_reconstruction", "size": args.size, "crop_margin": args.crop_margin,
              "photo_vae": part1(args)}
    if args.sd_steps:
        result["sd15_vae"] = part2(args)
    result.update({"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                   "cpus": os.cpu_count()})
    for row in result["photo_vae"]["methods"].values():
        row.update({key: finite(value) for key, value in row.items() if key.endswith("psnr") or "psnr_" in key})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
