"""GPU speed of one edit: bld eager, bld compiled, and diffusers' inpaint pipeline on the same parts.

Real-size architectures with random weights (speed does not depend on the values): one 50-step SD 1.5
edit at 512 px and one 30-step SDXL edit at 1024 px, batch 1 and 4, in float16. For each: seconds per
edit (median of the timed runs, after a warm-up that also compiles), UNet steps per second, and the share
of the compute floor reached (the UNet, text and VAE work of the edit at the GPU's dense peak; the UNet
figures per sample are 0.80 TFLOP for SD 1.5 at 512 px and 6.76 for SDXL at 1024 px, scaled with the
latent area at other sizes). Prints a table and one JSON line.

    python benchmarks/bench_gpu.py                            # on a CUDA GPU, about 8 minutes with compiling
    python benchmarks/bench_gpu.py --families sd15 --no-compile
    python benchmarks/bench_gpu.py --tiny --device cpu        # tiny components, seconds: what the test runs

Variants: `eager` (bld's pipeline as loaded), `compiled` (torch.compile of the UNet, channels-last),
`cutoff` (compiled, guidance off for the last 20% of the kept steps: guidance_cutoff=0.8), and
`diffusers` (StableDiffusion[XL]InpaintPipeline built from the same components, strength = 1 - skip).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import PIL.Image
import torch

FAMILIES = {  # native size, steps, TFLOP at that size: UNet per sample, VAE encode and decode per image
    "sd15": {"size": 512, "steps": 50, "unet": 0.80, "encode": 1.12, "decode": 2.51},
    "sdxl": {"size": 1024, "steps": 30, "unet": 6.76, "encode": 4.88, "decode": 10.47},
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_tflops(device: torch.device) -> float | None:
    """Dense float16 / bfloat16 peak of the GPU, from its name; None when unknown (or a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def scene(size: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, size // 3: 5 * size // 6] = 255
    return image, PIL.Image.fromarray(mask)


def components(family: str, tiny: bool, dtype: torch.dtype) -> dict:
    if tiny:
        from bld.testing.tiny_models import tiny_sd_components, tiny_sdxl_components

        parts = (tiny_sd_components if family == "sd15" else tiny_sdxl_components)()
        return {k: v.to(dtype) if isinstance(v, torch.nn.Module) else v for k, v in parts.items()}
    from bld.testing.reference_architectures import sd15_components, sdxl_components

    return sd15_components(dtype) if family == "sd15" else sdxl_components(dtype)


def pipelines(family: str, parts: dict, device: torch.device):
    """bld's pipeline and diffusers' inpaint pipeline over the same modules."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    from bld import BlendedLatentDiffusionPipeline, BlendedLatentDiffusionXLPipeline

    ours_cls, theirs_cls = ((BlendedLatentDiffusionPipeline, StableDiffusionInpaintPipeline) if family == "sd15"
                            else (BlendedLatentDiffusionXLPipeline, StableDiffusionXLInpaintPipeline))
    ours = ours_cls(**parts).to(device)
    theirs = theirs_cls(**ours.components)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs


def timed(run, repeats: int, device: torch.device) -> list[float]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return times


def bench_family(family: str, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    from bld.loading import speed_up
    from bld.ops.blending import num_skipped_steps

    spec = dict(FAMILIES[family])
    if args.tiny:
        spec.update(size=64, steps=4)
    size, steps = args.size or spec["size"], args.steps or spec["steps"]
    scale = (size / spec["size"]) ** 2
    kept = steps - num_skipped_steps(steps, args.skip)
    image, mask = scene(size)
    ours, theirs = pipelines(family, components(family, args.tiny, dtype), device)
    peak = peak_tflops(device)
    rows = []

    def add(variant, batch, times, guided_steps):
        seconds = statistics.median(times)
        unet_samples = batch * (2 * guided_steps + (kept - guided_steps))
        floor_tflop = scale * (unet_samples * spec["unet"] + spec["encode"] + batch * spec["decode"])
        share = None if peak is None or args.tiny else round(floor_tflop / peak / seconds, 4)
        rows.append({"family": family, "variant": variant, "batch": batch, "size": size, "steps": steps,
                     "unet_steps": kept, "seconds": round(seconds, 4), "unet_steps_per_s": round(kept / seconds, 2),
                     "floor_tflop": round(floor_tflop, 1), "floor_share": share, "runs": [round(x, 4) for x in times]})
        print(f"{family:5s} {variant:9s} batch {batch}  {seconds:8.3f} s  {kept / seconds:7.2f} UNet steps/s"
              + ("" if share is None else f"  {100 * share:5.1f}% of the floor"), flush=True)

    def runners(batch):
        generator = [torch.Generator().manual_seed(k) for k in range(batch)]
        common = dict(num_inference_steps=steps, guidance_scale=7.5, num_images_per_prompt=batch, output_type="np")

        def run_ours(**extra):
            return ours("a red car", image, mask, skip_fraction=args.skip, latent_mask_mode="top-left",
                        reconstruction="none", generator=generator, **common, **extra).images

        def run_theirs():
            return theirs("a red car", image=image, mask_image=mask, strength=1 - args.skip, height=size,
                          width=size, generator=generator, **common).images

        return run_ours, run_theirs

    for batch in args.batches:
        run_ours, run_theirs = runners(batch)
        add("eager", batch, timed(run_ours, args.repeats, device), kept)
        add("diffusers", batch, timed(run_theirs, args.repeats, device), kept)
    if args.compile:
        speed_up(ours, compile=True, channels_last=True)
        for batch in args.batches:
            run_ours, _ = runners(batch)
            add("compiled", batch, timed(run_ours, args.repeats, device), kept)
            guided = int(np.ceil(0.8 * kept))
            add("cutoff", batch, timed(lambda: run_ours(guidance_cutoff=0.8), args.repeats, device), guided)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--size", type=int, help="image side (default: the family's native size)")
    parser.add_argument("--steps", type=int, help="full schedule (default: 50 for SD 1.5, 30 for SDXL)")
    parser.add_argument("--skip", type=float, default=0.25, help="skipped fraction (the paper's 0.25)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--tiny", action="store_true", help="tiny components at 64 px, 4 steps (the CPU test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 elsewhere")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    rows = []
    for family in args.families.split(","):
        rows += bench_family(family, args, device, dtype)
    by = {(r["family"], r["variant"], r["batch"]): r["seconds"] for r in rows}
    ratios = {f"{f}_b{b}_ours_over_diffusers": round(by[(f, "eager", b)] / by[(f, "diffusers", b)], 4)
              for f, v, b in by if v == "eager"}
    ratios.update({f"{f}_b{b}_compiled_over_eager": round(by[(f, "compiled", b)] / by[(f, "eager", b)], 4)
                   for f, v, b in by if v == "compiled"})
    result = {"benchmark": "gpu_edit", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "dtype": str(dtype).replace("torch.", ""),
              "torch": torch.__version__, "tiny": args.tiny, "rows": rows, "ratios": ratios}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
