"""Time a crop-and-stitch edit of one 400x400 px mask on photos of 1 to 48 MP, against diffusers.

bld (crop 'auto') and diffusers' StableDiffusionInpaintPipeline with `padding_mask_crop` run the SD 1.5
architecture (random weights: speed does not depend on weight values) on the same components, the same
box (the mask's box plus 100 px of context on each side, edited at 512x512), scheduler, steps, guidance
and seed, in one process, alternating. Both return PIL images at the photo's full size. Where feasible
(--whole-up-to MP), bld also edits the whole photo at its own size (crop 'off'): the cost crop-and-stitch
avoids. Prints each run, the ratios (48 MP / 1 MP for bld, bld / diffusers per size) and one JSON line.

    python benchmarks/bench_crop_and_stitch.py --steps 4
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionInpaintPipeline

from bld import BlendedLatentDiffusionPipeline
from bld.testing.reference_architectures import sd15_components
from bld.testing.tiny_models import tiny_sd_components

MASK_SIDE = 400
SIZES_MP = {1: (1224, 816), 4: (2448, 1632), 16: (4896, 3264), 48: (8484, 5656)}  # 3:2 photos


def photo(size: tuple[int, int]) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A smooth random photo of `size` and a 400 px square mask left of its centre."""
    width, height = size
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8))
    image = image.resize((width, height), PIL.Image.BILINEAR)
    mask = np.zeros((height, width), np.uint8)
    left, top = width // 3 - MASK_SIDE // 2, height // 2 - MASK_SIDE // 2
    mask[top:top + MASK_SIDE, left:left + MASK_SIDE] = 255
    return image, PIL.Image.fromarray(mask)


def timed(run) -> float:
    gc.collect()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="full schedule; skip 0.25 runs the last 3 of 4")
    parser.add_argument("--sizes", default="1,4,16,48", help="photo sizes in MP, among 1, 4, 16, 48")
    parser.add_argument("--repeats", type=int, default=1, help="timed (ours, theirs) pairs per size")
    parser.add_argument("--whole-up-to", type=float, default=1, help="also time crop 'off' up to this many MP")
    parser.add_argument("--tiny", action="store_true", help="tiny components (a smoke test of the script)")
    args = parser.parse_args(argv)

    ours = BlendedLatentDiffusionPipeline(**(tiny_sd_components() if args.tiny else sd15_components()))
    theirs = StableDiffusionInpaintPipeline(**ours.components)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    common = dict(num_inference_steps=args.steps, guidance_scale=7.5)
    padding = int(0.25 * MASK_SIDE)  # bld's default crop_padding, in pixels for diffusers

    def run_ours(image, mask, crop="auto"):
        return ours("a red car", image, mask, skip_fraction=0.25, latent_mask_mode="top-left", crop=crop,
                    generator=torch.Generator().manual_seed(0), **common).images

    def run_theirs(image, mask):
        side = ours.native_size
        return theirs("a red car", image=image, mask_image=mask, strength=0.75, height=side, width=side,
                      padding_mask_crop=padding, generator=torch.Generator().manual_seed(0), **common).images

    warm_image, warm_mask = photo(SIZES_MP[1])
    out = run_ours(warm_image, warm_mask)
    run_theirs(warm_image, warm_mask)
    assert out[0].size == warm_image.size
    rows = {}
    for mp in [int(s) for s in args.sizes.split(",")]:
        image, mask = photo(SIZES_MP[mp])
        times = {"ours": [], "theirs": []}
        for repeat in range(args.repeats):
            order = ["ours", "theirs"] if repeat % 2 == 0 else ["theirs", "ours"]
            for name in order:
                elapsed = timed(lambda: run_ours(image, mask) if name == "ours" else run_theirs(image, mask))
                times[name].append(elapsed)
                print(f"{mp:2d} MP {image.width}x{image.height} {name:6s} {elapsed:7.2f} s", flush=True)
        row = {"pixels": image.width * image.height, "s_ours": round(statistics.median(times["ours"]), 3),
               "s_theirs": round(statistics.median(times["theirs"]), 3)}
        row["ratio_ours_over_theirs"] = round(row["s_ours"] / row["s_theirs"], 4)
        if mp <= args.whole_up_to:
            row["s_ours_whole_image"] = round(timed(lambda: run_ours(image, mask, crop="off")), 3)
            print(f"{mp:2d} MP {image.width}x{image.height} whole  {row['s_ours_whole_image']:7.2f} s (crop off)")
        rows[mp] = row
    result = {"benchmark": "crop_and_stitch", "architecture": "sd15", "steps": args.steps,
              "blended_steps": args.steps - int(args.steps * 0.25), "mask": MASK_SIDE, "sizes": rows,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
              "cpus": os.cpu_count()}
    if 1 in rows and 48 in rows:
        result["ratio_48mp_over_1mp_ours"] = round(rows[48]["s_ours"] / rows[1]["s_ours"], 4)
    for mp, row in rows.items():
        extra = f", whole image {row['s_ours_whole_image']} s" if "s_ours_whole_image" in row else ""
        print(f"{mp} MP: bld {row['s_ours']} s, diffusers {row['s_theirs']} s, ratio {row['ratio_ours_over_theirs']}"
              f" (target <= 1.0){extra}")
    if "ratio_48mp_over_1mp_ours" in result:
        print(f"bld 48 MP / 1 MP: {result['ratio_48mp_over_1mp_ours']} (flat = 1)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
