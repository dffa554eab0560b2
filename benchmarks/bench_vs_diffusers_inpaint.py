"""Time bld's pipeline against diffusers' inpaint pipeline of the same family on identical components.

Both run the same architecture (random weights: speed does not depend on weight values) with the same
scheduler, steps, guidance and seed, in one process, alternating runs so both see the same machine state:
SD 1.5 (its 4-channel UNet) against StableDiffusionInpaintPipeline, or SD3-medium / FLUX.1-dev at real
width with few blocks (bld.testing.reference_flow_architectures) against StableDiffusion3InpaintPipeline /
FluxInpaintPipeline, which blend a plain 16-channel transformer's latents as bld does. Prints each run, the
median time ratio ours/theirs, the peak resident memory each run added, and one JSON line.

    python benchmarks/bench_vs_diffusers_inpaint.py --size 256 --steps 4 --pairs 4
    python benchmarks/bench_vs_diffusers_inpaint.py --architecture flux --size 256 --steps 4 --pairs 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import threading
import time

import numpy as np
import PIL.Image
import torch
from diffusers import FluxInpaintPipeline, StableDiffusion3InpaintPipeline, StableDiffusionInpaintPipeline

from bld import BlendedLatentDiffusionFluxPipeline, BlendedLatentDiffusionPipeline, BlendedLatentDiffusionSD3Pipeline
from bld.testing.reference_architectures import sd15_components
from bld.testing.reference_flow_architectures import flux_dev_components, sd3_medium_components

ARCHITECTURES = {  # name: (components, ours, theirs, guidance)
    "sd15": (sd15_components, BlendedLatentDiffusionPipeline, StableDiffusionInpaintPipeline, 7.5),
    "sd3": (sd3_medium_components, BlendedLatentDiffusionSD3Pipeline, StableDiffusion3InpaintPipeline, 7.0),
    "flux": (flux_dev_components, BlendedLatentDiffusionFluxPipeline, FluxInpaintPipeline, 3.5),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory while the block runs, sampled every 2 ms, minus the resident memory at its start."""

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.added = self.peak - self.start


def scene(size: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, size // 3: 5 * size // 6] = 255
    return image, PIL.Image.fromarray(mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="sd15",
                        help="sd15 (full size), sd3 (SD3-medium, 2 blocks), flux (FLUX.1-dev, 1+1 blocks)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="full schedule; skip 0.25 runs the last 3 of 4")
    parser.add_argument("--pairs", type=int, default=4, help="timed (ours, theirs) pairs after one warm-up each")
    parser.add_argument("--num-images", type=int, default=1)
    args = parser.parse_args()

    build, ours_cls, theirs_cls, guidance = ARCHITECTURES[args.architecture]
    ours = ours_cls(**build())
    theirs = theirs_cls(**ours.components)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    image, mask = scene(args.size)
    common = dict(num_inference_steps=args.steps, guidance_scale=guidance, num_images_per_prompt=args.num_images,
                  output_type="np")

    def run_ours():
        return ours("a red car", image, mask, skip_fraction=0.25, latent_mask_mode="top-left", crop="off",
                    generator=torch.Generator().manual_seed(0), **common).images

    def run_theirs():
        return theirs("a red car", image=image, mask_image=mask, strength=0.75, height=args.size, width=args.size,
                      generator=torch.Generator().manual_seed(0), **common).images

    runners = {"ours": run_ours, "theirs": run_theirs}
    for run in runners.values():  # warm-up
        run()
    times = {name: [] for name in runners}
    memory = {name: [] for name in runners}
    for pair in range(args.pairs):
        order = list(runners) if pair % 2 == 0 else list(runners)[::-1]
        for name in order:
            gc.collect()
            with PeakRSS() as peak:
                start = time.perf_counter()
                runners[name]()
                elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            memory[name].append(peak.added)
            print(f"pair {pair + 1} {name:6s} {elapsed:7.2f} s  peak RSS +{peak.added / 2**20:7.1f} MiB", flush=True)

    ratios = [a / b for a, b in zip(times["ours"], times["theirs"])]
    result = {
        "benchmark": "bld_vs_diffusers_inpaint", "architecture": args.architecture, "size": args.size,
        "steps": args.steps,
        "blended_steps": args.steps - int(args.steps * 0.25), "num_images": args.num_images, "pairs": args.pairs,
        "median_s_ours": round(statistics.median(times["ours"]), 3),
        "median_s_theirs": round(statistics.median(times["theirs"]), 3),
        "median_ratio_ours_over_theirs": round(statistics.median(ratios), 4),
        "peak_rss_added_mib_ours": round(max(memory["ours"]) / 2**20, 1),
        "peak_rss_added_mib_theirs": round(max(memory["theirs"]) / 2**20, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    print(f"median time ours {result['median_s_ours']} s, theirs {result['median_s_theirs']} s, "
          f"ratio ours/theirs {result['median_ratio_ours_over_theirs']} (target <= 1.03)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
