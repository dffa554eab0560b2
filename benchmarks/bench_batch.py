"""Rows per second of `bld batch` against a loop of `bld edit` processes and a single process looping.

The same rows (world edit tasks on the bundled model: image, mask, prompt and seed each) are edited three
ways on this machine: one `bld edit` process per row (each loads the model), one process that loads the
model once and loops over the rows (the floor for one worker), and `bld batch` with 1, 2, ... workers on a
local Ray (it starts Ray and its workers, then edits). Every figure is the wall time of the whole job,
loading included. Prints a table, the ratios and one JSON line.

    python benchmarks/bench_batch.py                          # about 10 minutes on 2 CPU cores
    python benchmarks/bench_batch.py --rows 16 --workers 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bld.world.scenes import sample_edit_task


def write_rows(folder: Path, count: int, steps: int, results: int) -> list[dict]:
    """`count` add/replace tasks written as files, and their manifest rows."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(count):
        task = sample_edit_task(rng, kind=("add", "replace")[k % 2])
        task.image.save(folder / f"image-{k}.png")
        task.mask_image().save(folder / f"mask-{k}.png")
        rows.append({"id": f"row-{k}", "image": f"image-{k}.png", "mask": f"mask-{k}.png", "prompt": task.prompt,
                     "seed": k, "num_inference_steps": steps, "num_images": results})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-800:]}")
    return time.perf_counter() - start


def edit_processes(folder: Path, rows: list[dict], model: list[str]) -> float:
    """One `bld edit` process per row, as a shell loop would run them."""
    out = folder / "processes"
    out.mkdir()
    return sum(timed([sys.executable, "-m", "bld", "edit", r["image"], r["mask"], r["prompt"], "-o",
                      str(out / f"{r['id']}.png"), "--seed", str(r["seed"]), "--steps", str(r["num_inference_steps"]),
                      "--num-results", str(r["num_images"]), *model], folder) for r in rows)


SINGLE = """
import json, sys, time
from pathlib import Path
import PIL.Image
from bld.editing import run_edit, result_metadata
from bld.image_io import save_png_atomic
from bld.loading import load_pipeline, load_scorer
from bld.model_defaults import default_model, model_edit_defaults
from bld.params import EditParams
folder, model = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else default_model()
pipe = load_pipeline(model)
pipe.set_progress_bar_config(disable=True)
scorer = load_scorer(None, model, pipe.device)
out = folder / "single"
out.mkdir()
for line in (folder / "manifest.jsonl").read_text().splitlines():
    row = json.loads(line)
    values = {**model_edit_defaults(model), **{k: v for k, v in row.items() if k not in ("id", "image", "mask")}}
    guidance = values.get("guidance_scale") or pipe.default_guidance_scale
    params = EditParams.from_dict({**values, "guidance_scale": guidance})
    image = PIL.Image.open(folder / row["image"]).convert("RGB")
    mask = PIL.Image.open(folder / row["mask"]).convert("L")
    for k, result in enumerate(run_edit(pipe, image, mask, params, scorer=scorer)):
        save_png_atomic(result.image, out / f"{row['id']}-{k + 1}.png", metadata=result_metadata(params, result, model))
"""


def single_process(folder: Path, model: list[str]) -> float:
    """One process that loads the model once and loops over the rows (what one batch worker does)."""
    return timed([sys.executable, "-c", SINGLE, str(folder), *model[1:]], folder)


def batch(folder: Path, workers: int, model: list[str]) -> float:
    return timed([sys.executable, "-m", "bld", "batch", "manifest.jsonl", "-o", f"batch-{workers}", "--workers",
                  str(workers), "--no-progress", *model], folder)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="diffusion steps per edit (default 20)")
    parser.add_argument("--results", type=int, default=1, help="results per row (default 1)")
    parser.add_argument("--workers", default="1,2", help="worker counts of bld batch (default 1,2)")
    parser.add_argument("--tiny", action="store_true", help="the tiny random model (a test of this script)")
    args = parser.parse_args(argv)
    model = ["--model", "tiny-random"] if args.tiny else []
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory(prefix="bld-bench-batch-") as tmp:
        folder = Path(tmp)
        rows = write_rows(folder, args.rows, args.steps, args.results)
        seconds = {"processes": edit_processes(folder, rows, model), "single": single_process(folder, model)}
        for count in counts:
            seconds[f"batch_w{count}"] = batch(folder, count, model)
    rate = {name: args.rows / s for name, s in seconds.items()}
    print(f"{args.rows} rows, {args.steps} steps, {args.results} result(s) each, {os.cpu_count()} CPUs")
    for name, s in seconds.items():
        print(f"  {name:12s} {s:8.1f} s  {rate[name]:6.3f} rows/s")
    ratios = {f"{name}_over_processes": rate[name] / rate["processes"] for name in seconds if name != "processes"}
    ratios.update({f"{name}_over_single": rate[name] / rate["single"] for name in seconds if name.startswith("batch")})
    for name, value in ratios.items():
        print(f"  {name:28s} {value:5.2f}x")
    result = {"benchmark": "batch", "rows": args.rows, "steps": args.steps, "results": args.results,
              "seconds": {k: round(v, 2) for k, v in seconds.items()},
              "rows_per_s": {k: round(v, 4) for k, v in rate.items()},
              "ratios": {k: round(v, 3) for k, v in ratios.items()},
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
