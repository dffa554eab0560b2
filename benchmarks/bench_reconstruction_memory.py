"""Memory of latent / decoder reconstruction: stored decoder activations per pixel, with and without
gradient checkpointing (what `bld.ops.reconstruction.CHECKPOINT_ABOVE_PIXELS` decides between).

The real-size SD 1.5 VAE architecture with random weights (memory and time do not depend on the values)
runs one decoder optimization step at two image sizes, each in a fresh process that reports its peak
resident memory. The slope between the two sizes is the memory per pixel, the intercept holds the model
and Adam's state. Both settings run side by side; the output is a table and a JSON line.

    python benchmarks/bench_reconstruction_memory.py                  # about 3 minutes on 2 CPU cores
    python benchmarks/bench_reconstruction_memory.py --sizes 64 128   # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def one_run(size: int, checkpointing: bool) -> dict:
    """In this process: one decoder fine-tuning step at size x size px; peak RSS in bytes and seconds."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    import bld.ops.reconstruction as reconstruction
    from bld.testing.reference_architectures import SD_VAE, random_init_

    torch.manual_seed(0)
    with init_empty_weights():
        vae = AutoencoderKL(**SD_VAE)
    random_init_(vae)
    original = torch.rand(1, 3, size, size) * 2 - 1
    edited = torch.rand(1, 3, size, size) * 2 - 1
    latents = torch.randn(1, 4, size // 8, size // 8)
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    reconstruction.CHECKPOINT_ABOVE_PIXELS = 0 if checkpointing else size * size
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    reconstruction.reconstruct_background("decoder", original, edited, mask, vae=vae, latents=latents, steps=1)
    seconds = time.perf_counter() - start
    return {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "base": base, "seconds": seconds}


def measure(size: int, checkpointing: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(size), str(int(checkpointing))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(128, 256), metavar=("SMALL", "LARGE"))
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child[0], bool(args.child[1]))))
        return
    small, large = args.sizes
    rows = {}
    for checkpointing in (False, True):
        runs = {size: measure(size, checkpointing) for size in (small, large)}
        per_pixel = (runs[large]["peak"] - runs[small]["peak"]) / (large * large - small * small)
        rows["checkpointing" if checkpointing else "stored"] = {
            "bytes_per_pixel": per_pixel, "peak_large_gib": runs[large]["peak"] / 2**30,
            "seconds_large": runs[large]["seconds"],
            "estimate_1024px_gib": per_pixel * 1024 * 1024 / 2**30,
        }
    print(f"SD 1.5 VAE decoder, one decoder-reconstruction step (float32, CPU), sizes {small} and {large} px")
    print(f"{'activations':<14} {'kB / pixel':>10} {'peak at ' + str(large) + ' px':>16} {'s at ' + str(large):>9}"
          f" {'1024 px estimate':>17}")
    for name, row in rows.items():
        print(f"{name:<14} {row['bytes_per_pixel'] / 1e3:>10.1f} {row['peak_large_gib']:>14.2f} G "
              f"{row['seconds_large']:>9.1f} {row['estimate_1024px_gib']:>15.1f} G")
    ratio = rows["stored"]["bytes_per_pixel"] / rows["checkpointing"]["bytes_per_pixel"]
    slower = rows["checkpointing"]["seconds_large"] / rows["stored"]["seconds_large"]
    print(f"checkpointing: {ratio:.1f}x less memory per pixel, {slower:.2f}x the time")
    print(json.dumps({"benchmark": "reconstruction_memory", "sizes": [small, large], **rows,
                      "memory_ratio": ratio, "time_ratio": slower, "machine": platform.processor() or platform.machine(),
                      "python": platform.python_version()}))


if __name__ == "__main__":
    main()
