"""`bld` command line: a thin layer over the pipeline. Flags come from EditParams."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import typing
import warnings
from pathlib import Path

import numpy as np
import PIL.Image

from ..image_io import MAX_PIXELS, InputError, check_edit_size, check_mask_region, load_region_masks
from ..outpainting import DEFAULT_OVERLAP, FILLS
from ..params import NOT_CONTROLS, EditParams, Region, field_flag, field_value_type

RUNTIME_FLAGS = ("model", "device", "dtype")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits with 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_param_flags(parser: argparse.ArgumentParser, leave_out: tuple[str, ...] = ()) -> None:
    """One flag per EditParams field (the prompt is positional), with its default, range and help. A flag not
    given is None: params_from_args fills in the model's recommended value or the field's default."""
    group = parser.add_argument_group("edit parameters", bundled_defaults_note())
    for field in dataclasses.fields(EditParams):
        if field.name == "prompt" or field.name in leave_out or field.name in NOT_CONTROLS:
            continue
        meta, flag = field.metadata, field_flag(field)
        help_text = meta["help"]
        if meta["low"] is not None:
            help_text += f" Range [{meta['low']}, {meta['high']}]."
        if field.default is not None and not isinstance(field.default, bool):
            help_text += f" Default: {field.default}."
        if isinstance(field.default, bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text + (" On by default." if field.default else ""))
        elif meta["choices"]:
            group.add_argument(flag, dest=field.name, choices=meta["choices"], default=None, help=help_text)
        else:
            kind = field_value_type(field)
            group.add_argument(flag, dest=field.name, type=kind, default=None,
                               metavar={int: "N", float: "X"}.get(kind, "TEXT"), help=help_text)


def bundled_defaults_note() -> str:
    """The edit-parameters group's description: where defaults come from, with the bundled model's own."""
    from ..model_defaults import BUNDLED_MODEL_DIR, EDIT_DEFAULTS_FILE, model_edit_defaults

    note = (f"Defaults are the paper's, except where the model folder's {EDIT_DEFAULTS_FILE} recommends "
            "others (flags given always win).")
    try:
        own = model_edit_defaults(str(BUNDLED_MODEL_DIR))
    except InputError:
        own = {}
    if own:
        note += " The bundled model's: " + ", ".join(f"{field_flag(f)} {own[f.name]}" for f in dataclasses.fields(
            EditParams) if f.name in own) + "."
    return note


def params_from_args(args: argparse.Namespace, model_defaults: dict | None = None) -> EditParams:
    """The flags given, over `model_defaults` (a model's recommended values), over EditParams' defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(EditParams)
             if getattr(args, f.name, None) is not None}
    return EditParams.from_dict({**(model_defaults or {}), **given})


def add_runtime_flags(parser: argparse.ArgumentParser, gpu_options: bool = True, outputs: bool = True) -> None:
    parser.add_argument("--model", default=None,
                        help="diffusers model folder or Hugging Face Hub id (SD 1.x/2.x, SDXL, SD3/3.5, FLUX.1 or "
                             "LDM text-to-image; the family is read from its model_index.json). Default: the "
                             "bundled model, which draws a 64 px world of colored shapes (README, 'The bundled "
                             "model'); 'tiny-random' builds random components in code, for trying the tool.")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (on CUDA float16, bfloat16 for SD3 and FLUX; float32 "
                                                        "elsewhere), float32, float16, bfloat16")
    if gpu_options:
        parser.add_argument("--compile", action="store_true",
                            help="torch.compile the UNet (GPU: faster after a first edit that compiles, per size)")
        parser.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPU)")
        parser.add_argument("--cpu-offload", action="store_true",
                            help="keep the models in CPU memory and move each to the GPU only while it runs: "
                                 "slower, but FLUX.1-dev in bfloat16 then fits a 24 GB GPU")
    parser.add_argument("--clip-model", default=None,
                        help="CLIP model (transformers folder or Hub id, e.g. openai/clip-vit-base-patch16) that "
                             "ranks the results; default: the bundled model's")
    if outputs:
        parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
        parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_verbose_flag(parser)


def add_size_limit_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-megapixels", type=float, default=None, metavar="X",
                        help=f"refuse input images larger than this (default {MAX_PIXELS / 1e6:g} MP)")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' loading bars and warnings")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bld", description="Text-driven local image editing with Blended Latent Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    edit = sub.add_parser("edit", help="edit the masked region of an image to follow a prompt",
                          description="Edit the white region of MASK in IMAGE to follow PROMPT; keep the rest.")
    edit.add_argument("image", help="the image to edit (PNG, JPEG, WebP, TIFF, ...)")
    edit.add_argument("mask", help="the mask: white = edit, black = keep; same size or aspect ratio as the image")
    edit.add_argument("prompt", help="what the masked region should show")
    edit.add_argument("-o", "--output", required=True,
                      help="result PNG; with several results: NAME-1.png, NAME-2.png, ...")
    edit.add_argument("--region", nargs="+", action="append", metavar="MASK PROMPT", default=None,
                      help="one more region edited in the same pass: its mask (same aspect ratio as the image), its "
                           "own prompt, then optionally strength=S (in (0, 1]: it joins for the last S of the kept "
                           "steps) and negative=TEXT; repeat for more. The positional MASK and PROMPT are the first "
                           "region; where regions overlap, the later one wins")
    add_param_flags(edit)
    add_runtime_flags(edit)
    add_size_limit_flag(edit)

    out = sub.add_parser("outpaint", help="extend the image on any side and draw the new area to follow a prompt",
                         description="Extend IMAGE by the given pixels on each side and draw the new area (and a "
                                     "narrow band of the old border) to follow PROMPT; every other original "
                                     "pixel is kept. The result is the input's size plus the extension.")
    out.add_argument("image", help="the image to extend (PNG, JPEG, WebP, TIFF, ...)")
    out.add_argument("prompt", help="what the new area should show")
    out.add_argument("-o", "--output", required=True,
                     help="result PNG; with several results: NAME-1.png, NAME-2.png, ...")
    for side in ("left", "right", "top", "bottom"):
        out.add_argument(f"--{side}", type=int, default=0, metavar="PX", help=f"pixels to add on the {side}")
    out.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, metavar="PX",
                     help=f"band inside the old border that is redrawn too, so the seam vanishes (default "
                          f"{DEFAULT_OVERLAP})")
    out.add_argument("--fill", choices=FILLS, default="edge",
                     help="how the new area is pre-filled before the model draws it: edge (the border's colors, "
                          "blurred outward; default) or telea (OpenCV inpainting)")
    add_param_flags(out, leave_out=("invert_mask",))
    add_runtime_flags(out)
    add_size_limit_flag(out)

    rec = sub.add_parser("reconstruct", help="restore the background of results already produced",
                         description="Reconstruct the background of RESULT(s) from ORIGINAL outside MASK "
                                     "(PAPER.md section 2), e.g. with the decoder fine-tune on the results you keep.")
    rec.add_argument("original", help="the image that was edited")
    rec.add_argument("mask", help="the mask used for the edit (white = edited)")
    rec.add_argument("results", nargs="+", help="edited result(s), same size as the original")
    rec.add_argument("-o", "--output", required=True, help="output PNG; with several results: NAME-1.png, ...")
    rec.add_argument("--method", choices=("pixel", "poisson", "latent", "decoder"), default="decoder",
                     help="reconstruction method (default: decoder, the paper's)")
    rec.add_argument("--invert-mask", action="store_true", help="the edit used --invert-mask")
    rec.add_argument("--feather", type=int, default=0, help="pixel method: blend width inside the mask edge")
    rec.add_argument("--steps", type=int, default=75, help="latent/decoder optimization steps (default 75)")
    rec.add_argument("--background-weight", type=float, default=100.0,
                     help="latent/decoder: weight of the background term of the loss (default 100, the paper's)")
    rec.add_argument("--crop", action="store_true", help="latent/decoder: work on a crop around the mask")
    rec.add_argument("--model", default=None, help="model whose VAE to use (latent/decoder); default: the bundled")
    rec.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    rec.add_argument("--overwrite", action="store_true", help="replace existing output files")
    rec.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_verbose_flag(rec)

    demo = sub.add_parser("demo", help="edit a built-in scene and write a grid image you can look at")
    demo.add_argument("-o", "--output", default="bld-demo", help="folder for the results (default: bld-demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the first result (default: 0)")
    add_runtime_flags(demo)

    serve = sub.add_parser("serve", help="start the web app: paint a mask, type a prompt, get ranked edits",
                           description="Serve a web page (Gradio) for editing: the model loads once and requests "
                                       "queue on it. Open the printed URL in a browser.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    add_runtime_flags(serve, outputs=False)
    add_size_limit_flag(serve)

    conv = sub.add_parser("convert", help="save a single-file checkpoint (.safetensors, .ckpt) as a diffusers folder",
                          description="Convert a single-file Stable Diffusion checkpoint (SD 1.x/2.x or SDXL, as "
                                      "AUTOMATIC1111 and ComfyUI use) into a diffusers folder for --model. The "
                                      "architecture's config comes from --config, or from the Hugging Face Hub.")
    conv.add_argument("checkpoint", help="the single-file checkpoint")
    conv.add_argument("output", help="the diffusers folder to write")
    conv.add_argument("--config", default=None,
                      help="a diffusers folder or Hub id of the same architecture (needed offline)")
    conv.add_argument("--xl", action=argparse.BooleanOptionalAction, default=None,
                      help="the checkpoint is SDXL (default: read from a .safetensors file's keys)")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    conv.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_verbose_flag(conv)

    add_batch_parser(sub)
    add_eval_parser(sub)
    return parser


def add_batch_parser(sub) -> None:
    """`bld batch`: many edits from a manifest on Ray workers (bld.batch)."""
    batch = sub.add_parser(
        "batch", help="edit many images from a manifest on Ray workers (this machine or a cluster); resumable",
        description="Edit every row of MANIFEST (JSON Lines or CSV: image, mask, prompt, optional id, any edit "
                    "parameter; paths relative to the manifest) into OUTDIR: ID.png (ID-1.png ... with several "
                    "results) and results.jsonl, one line per row. Workers load the model once and edit row after "
                    "row. A killed job rerun with the same command edits only the rows not done. Flags below are "
                    "defaults for every row; a row's own values win. Exit status 1 when some rows failed.")
    batch.add_argument("manifest", help="the rows: a .jsonl file (one JSON object per line) or a .csv with a header")
    batch.add_argument("-o", "--output", required=True, help="folder for the results (created if missing)")
    batch.add_argument("--address", default=None,
                       help="Ray cluster to join ('auto', 'ray://HOST:10001'); default: start a local Ray here")
    batch.add_argument("--workers", type=int, default=None, metavar="N",
                       help="workers, each holding the model (default: one per GPU, else one per 4 CPU cores)")
    batch.add_argument("--gpus-per-worker", type=float, default=None, metavar="X",
                       help="GPUs of each worker; below 1 shares a GPU between workers (small models)")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument("--cpu-offload", action="store_true",
                       help="each worker keeps the models in CPU memory and moves each to its GPU only while it "
                            "runs (models larger than one GPU, e.g. FLUX.1-dev on 24 GB)")
    add_param_flags(batch)
    add_runtime_flags(batch, gpu_options=False)
    add_size_limit_flag(batch)


def add_eval_parser(sub) -> None:
    """`bld eval`: the evaluation harness (bld.world.evaluation); sizes default to the full run."""
    ev = sub.add_parser("eval", help="measure BLD and baselines on the synthetic world (the paper's Table 1 protocol)",
                        description="Run BLD variants, background reconstructions and baselines on a fixed, seeded "
                                    "suite of world edit tasks, a thin-mask suite and a large-canvas suite; judge "
                                    "every result with the world classifier; write report.md, report.json, "
                                    "results.jsonl, plots and example grids to OUTPUT. The default run takes about "
                                    "an hour on a 2-core CPU with the bundled model; --quick a few minutes.")
    ev.add_argument("-o", "--output", required=True, help="report folder (created if missing)")
    ev.add_argument("--quick", action="store_true",
                    help="smoke-test sizes: 6 tasks, 4 thin tasks, 20 steps, 3 example rows (explicit flags win)")
    ev.add_argument("--tasks", type=int, metavar="N", help="main-suite tasks, kinds in turn (default 72)")
    ev.add_argument("--thin-tasks", type=int, metavar="N", help="thin-suite tasks (default 48)")
    ev.add_argument("--large-tasks", type=int, metavar="N",
                    help="large-canvas tasks: crop-and-stitch against whole-canvas and downscaled edits (default 24)")
    ev.add_argument("--region-tasks", type=int, metavar="N",
                    help="two-region tasks: one edit with two regions against two edits in turn (default 24)")
    ev.add_argument("--seam-tasks", type=int, metavar="N",
                    help="soft-seam tasks: binary against blurred and grown masks (default 24)")
    ev.add_argument("--steps", type=int, metavar="N", help="diffusion steps of the full schedule (default 50)")
    ev.add_argument("--num-results", type=int, metavar="N", help="results per task and method (default 4)")
    ev.add_argument("--seed", type=int, metavar="N", help="suite and edit seed (default 0)")
    ev.add_argument("--skip-fraction", type=float, metavar="X", help="skipped fraction for every method (default 0.25)")
    ev.add_argument("--skip-fractions", metavar="X,X,...",
                    help="fractions for the precision-against-skip plot (default 0,0.25,0.5,0.75; '' for none)")
    ev.add_argument("--shrink", type=int, metavar="N", help="progressive shrinking's dilations on the thin suite "
                                                            "(default 3)")
    ev.add_argument("--guidance", type=float, metavar="X", help="guidance scale (default: the model's)")
    ev.add_argument("--reconstruction-steps", type=int, metavar="N", help="latent/decoder steps (default 75)")
    ev.add_argument("--reconstruct-top", type=int, metavar="N",
                    help="reconstruction variants run on the N top-ranked results per task (default 1)")
    ev.add_argument("--examples", type=int, metavar="N", help="tasks per suite in the example grids (default 6)")
    ev.add_argument("--no-baselines", action="store_true", help="skip SDEdit, blend-once and diffusers inpaint")
    ev.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runtime_flags(ev, gpu_options=False)


EVAL_OVERRIDES = {"tasks": "tasks", "thin_tasks": "thin_tasks", "large_tasks": "large_tasks",
                  "region_tasks": "region_tasks", "seam_tasks": "seam_tasks", "steps": "steps",
                  "num_results": "num_images", "seed": "seed", "skip_fraction": "skip_fraction", "shrink": "shrink",
                  "guidance": "guidance_scale",
                  "reconstruction_steps": "reconstruction_steps", "reconstruct_top": "reconstruct_top",
                  "examples": "examples"}


def eval_command_line(args: argparse.Namespace) -> str:
    """The `bld eval` command that the parsed `args` stand for (recorded in the report)."""
    parts = ["bld", "eval", "-o", args.output] + (["--quick"] if args.quick else [])
    for dest in (*EVAL_OVERRIDES, "skip_fractions", "threads", "model", "clip_model"):
        value = getattr(args, dest)
        if value is not None:
            parts += ["--" + dest.replace("_", "-"), str(value)]
    parts += [f for f, on in (("--no-baselines", args.no_baselines), ("--overwrite", args.overwrite)) if on]
    return " ".join(parts)


def run_batch_command(args: argparse.Namespace) -> dict:
    from ..batch import run_manifest
    from ..params import check_range

    if args.workers is not None:
        check_range("--workers", args.workers, 1, 100_000)
    if args.gpus_per_worker is not None:
        check_range("--gpus-per-worker", args.gpus_per_worker, 0.01, 64)
    defaults = {f.name: getattr(args, f.name) for f in dataclasses.fields(EditParams)
                if getattr(args, f.name, None) is not None}
    EditParams.from_dict({k: v for k, v in defaults.items()})  # a bad flag fails here, before any row
    check_model_source(args.model)
    summary = run_manifest(args.manifest, args.output, model=args.model, defaults=defaults, address=args.address,
                           workers=args.workers, gpus_per_worker=args.gpus_per_worker, device=args.device,
                           dtype=args.dtype, clip_model=args.clip_model, max_pixels=max_pixels(args),
                           overwrite=args.overwrite, progress=not args.no_progress, verbose=args.verbose,
                           cpu_offload=args.cpu_offload)
    for error in summary.errors[:10]:
        notice(f"row {error['id']} (line {error['line']}): {error['error']}")
    if len(summary.errors) > 10:
        notice(f"... and {len(summary.errors) - 10} more failed rows")
    before = f", {summary.done_before} done before" if summary.done_before else ""
    notice(f"{summary.rows} rows: {summary.ok} ok, {summary.failed} failed{before}; {summary.edited} edited now "
           f"in {summary.seconds:.1f} s; see {summary.results}")
    return {**summary.to_dict(), "outputs": [], "exit_status": 1 if summary.failed else 0}


def run_eval_command(args: argparse.Namespace) -> dict:
    from ..world.evaluation import EvalConfig, run_eval
    from ..world.evaluation.runner import check_output_folder

    overrides = {field: getattr(args, dest) for dest, field in EVAL_OVERRIDES.items() if getattr(args, dest) is not None}
    if args.skip_fractions is not None:
        try:
            overrides["skip_fractions"] = tuple(float(x) for x in args.skip_fractions.split(",") if x.strip())
        except ValueError:
            raise InputError(f"--skip-fractions {args.skip_fractions!r}: give numbers separated by commas") from None
    if args.no_baselines:
        overrides["baselines"] = False
    config = EvalConfig.quick(**overrides) if args.quick else EvalConfig(**overrides)
    check_output_folder(args.output, args.overwrite)
    quiet_loading(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    summary = run_eval(args.output, config, model=args.model, clip_model=args.clip_model, device=args.device,
                       dtype=args.dtype, overwrite=args.overwrite, progress=not args.no_progress,
                       command=eval_command_line(args))
    folder = Path(args.output)
    return {"outputs": [{"path": str(folder / "report.md")}, {"path": str(folder / "report.json")}],
            "claims": [{k: c[k] for k in ("comparison", "difference", "ci", "verdict")} for c in summary["claims"]],
            "seconds": summary["seconds"]["total"]}


def output_paths(output: str, count: int, overwrite: bool) -> list[Path]:
    """The result files for `count` results, checked before any work is done."""
    path = Path(output)
    if path.suffix.lower() != ".png":
        raise InputError(f"output {output!r} must end in .png: results are PNGs carrying their parameters")
    if not path.parent.is_dir():
        raise InputError(f"output folder '{path.parent}' does not exist: create it or choose another -o")
    paths = [path] if count == 1 else [path.with_name(f"{path.stem}-{k + 1}{path.suffix}") for k in range(count)]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise InputError(f"'{existing[0]}' already exists: pass --overwrite or choose another -o")
    return paths


def max_pixels(args: argparse.Namespace) -> int:
    """The input size limit from --max-megapixels (default image_io.MAX_PIXELS)."""
    from ..params import check_range

    if args.max_megapixels is None:
        return MAX_PIXELS
    check_range("--max-megapixels", args.max_megapixels, 0.001, 10_000)
    return int(args.max_megapixels * 1e6)


def check_model_source(model: str | None) -> None:
    """A Hub id that can be neither found in the cache nor downloaded is refused before anything loads."""
    from ..hub import local_files_only
    from ..model_defaults import TINY_RANDOM

    if model and model != TINY_RANDOM and not Path(model).exists():
        local_files_only(model)


def load_for_args(args, params: EditParams):
    """The pipeline, the model's name, the CLIP scorer for ranking (None when ranking is off or unavailable),
    and the params with the model's default guidance filled in, so that results record it."""
    from ..loading import default_model, load_pipeline, load_scorer

    model = args.model or default_model()
    quiet_loading(args)
    pipe = load_pipeline(model, device=args.device, dtype=args.dtype, scheduler=params.scheduler,
                         compile=args.compile, channels_last=args.channels_last, cpu_offload=args.cpu_offload)
    pipe.set_progress_bar_config(file=sys.stderr, leave=False)
    scorer = load_scorer(args.clip_model, model, pipe.device) if params.rank else None
    if params.rank and scorer is None:
        notice("results are not ranked: pass --clip-model (e.g. openai/clip-vit-base-patch16) to rank them")
    if params.guidance_scale is None:
        params = dataclasses.replace(params, guidance_scale=pipe.default_guidance_scale)
    return pipe, model, scorer, params


def warn_unknown_words(pipe, params: EditParams) -> None:
    from ..editing import unknown_words

    texts = [(params.prompt, "prompt"), (params.negative_prompt or "", "negative prompt")] + [
        (region.prompt, f"prompt of region {number}") for number, region in enumerate(params.regions, start=2)]
    for text, flag in texts:
        unknown, known = unknown_words(getattr(pipe, "tokenizer", None), text)
        if unknown:
            notice(f"the model does not know {', '.join(repr(w) for w in unknown)} in the {flag} and will draw "
                   f"something else; it knows: {' '.join(known)}")


def summarize(results, paths) -> list[dict]:
    from ..editing import json_safe

    return [json_safe({"path": str(p), "seed": r.seed, "score": r.score, "metrics": r.metrics, "crops": r.crops,
                       **({"region_scores": r.region_scores} if r.region_scores is not None else {})})
            for r, p in zip(results, paths)]


def notice(message: str) -> None:
    print(f"bld: {message}", file=sys.stderr)


def show_library_notices() -> None:
    """What the library logs (e.g. a reconstruction that switches to saving memory) reaches stderr as notices."""
    logger = logging.getLogger("bld")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bld: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def run_edit_command(args: argparse.Namespace) -> dict:
    from ..image_io import check_same_aspect, load_image, load_mask
    from ..model_defaults import model_edit_defaults

    # every check on the files and parameters comes before torch and the model are loaded
    params = params_from_args(args, model_edit_defaults(args.model))
    paths = output_paths(args.output, params.num_images, args.overwrite)
    limit = max_pixels(args)
    image = load_image(args.image, max_pixels=limit)
    mask = check_same_aspect(image, load_mask(args.mask, max_pixels=limit), image_name=args.image,
                             mask_name=args.mask)
    check_edit_size(image.size, params.crop, params.width, params.height)
    check_mask_region(mask, params.invert_mask, params.soft_mask)
    flags = [region_flag(values) for values in args.region or []]
    region_masks = load_region_masks([path for path, _ in flags], image, invert=params.invert_mask,
                                     soft=params.soft_mask, max_pixels=limit)
    if region_masks:
        params = dataclasses.replace(params, regions=tuple(region for _, region in flags))
    check_model_source(args.model)
    if region_masks:
        check_region_layout(mask, region_masks, params, image.size)
    return edit_and_save(args, params, image, mask, paths, region_masks=region_masks)


def region_flag(values: list[str]) -> tuple[str, Region]:
    """(mask path, Region) from one --region MASK PROMPT [strength=S] [negative=TEXT]."""
    usage = "give --region MASK PROMPT, then optionally strength=S and negative=TEXT"
    if len(values) < 2:
        raise InputError(f"--region {' '.join(values)}: {usage}")
    path, prompt, *options = values
    fields: dict = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("strength", "negative") or key in fields:
            raise InputError(f"--region {path}: {option!r} is not strength=S or negative=TEXT (once each); {usage}")
        fields[key] = value
    try:
        strength = float(fields.get("strength", 1.0))
        return path, Region(prompt, fields.get("negative"), strength)
    except ValueError:
        raise InputError(f"--region {path}: strength={fields['strength']} must be a number in (0, 1]") from None


def check_region_layout(mask, region_masks: list, params: EditParams, size: tuple[int, int]) -> None:
    """Every region keeps some pixels of its own after later ones win their overlaps (before a model loads)."""
    from ..editing import edit_layout

    try:
        edit_layout(mask, region_masks, params, size)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def run_outpaint_command(args: argparse.Namespace) -> dict:
    from ..image_io import load_image
    from ..model_defaults import model_edit_defaults
    from ..outpainting import Extension

    params = params_from_args(args, model_edit_defaults(args.model))
    paths = output_paths(args.output, params.num_images, args.overwrite)
    limit = max_pixels(args)
    image = load_image(args.image, max_pixels=limit)
    extension = Extension(args.left, args.right, args.top, args.bottom, args.overlap, args.fill)
    extension.check(image.size, limit)
    check_edit_size(extension.canvas_size(image.size), params.crop, params.width, params.height)
    check_model_source(args.model)

    from ..outpainting import outpaint_canvas

    canvas, mask = outpaint_canvas(image, extension)
    summary = edit_and_save(args, params, canvas, mask, paths,
                            extra_metadata={"bld_outpaint": json.dumps(extension.to_dict(), sort_keys=True)})
    return {**summary, "outpaint": extension.to_dict(), "size": list(canvas.size)}


def edit_and_save(args: argparse.Namespace, params: EditParams, image, mask, paths: list[Path],
                  extra_metadata: dict[str, str] | None = None, region_masks=()) -> dict:
    """Load the model, edit, write each result atomically with its parameters; the summary."""
    from ..editing import result_metadata, run_edit, with_seed
    from ..image_io import save_png_atomic
    from ..model_defaults import BUNDLED_MODEL_DIR, TINY_RANDOM
    from ..preview import describe_plan

    params = with_seed(params)
    start = time.perf_counter()
    pipe, model, scorer, params = load_for_args(args, params)
    if model == TINY_RANDOM:
        notice("no model given and no bundled model installed: using tiny random components (results are noise)")
    elif model == str(BUNDLED_MODEL_DIR) and image.size != (64, 64):
        notice("the bundled model knows only its world of shapes, drawn at 64 px: for photos pass --model with "
               "Stable Diffusion weights (a Hub id or a diffusers folder)")
    warn_unknown_words(pipe, params)
    if hasattr(pipe, "edit_preview"):
        notice(describe_plan(pipe.edit_preview(image, mask, params, region_masks=region_masks), params, image.size))
    results = run_edit(pipe, image, mask, params, scorer=scorer, region_masks=region_masks)
    for result, path in zip(results, paths):
        save_png_atomic(result.image, path, metadata={**result_metadata(params, result, model),
                                                      **(extra_metadata or {})}, overwrite=args.overwrite)
    return {"outputs": summarize(results, paths), "ranked": scorer is not None, "params": params.to_dict(),
            "model": model, "device": str(pipe.device), "seconds": round(time.perf_counter() - start, 3)}


def run_demo_command(args: argparse.Namespace) -> dict:
    from ..editing import result_metadata, run_edit
    from ..grid import make_grid
    from ..image_io import save_png_atomic
    from ..loading import TINY_RANDOM
    from ..model_defaults import model_edit_defaults
    from ..world.demo import DEMO_PROMPT, demo_scene

    folder = Path(args.output)
    params = EditParams.from_dict({**model_edit_defaults(args.model), "prompt": DEMO_PROMPT,
                                   "num_inference_steps": 20, "seed": args.seed})
    names = ["input.png", "mask.png", "grid.png"] + [f"result-{k + 1}.png" for k in range(params.num_images)]
    if not args.overwrite:
        existing = [folder / n for n in names if (folder / n).exists()]
        if existing:
            raise InputError(f"'{existing[0]}' already exists: pass --overwrite or choose another -o")
    start = time.perf_counter()
    pipe, model, scorer, params = load_for_args(args, params)
    scene, mask = demo_scene()
    if model == TINY_RANDOM:
        notice("the bundled model is not installed yet: this demo runs tiny random components, so the edited "
               "region shows noise; pass --model with a Stable Diffusion folder for a real edit")
    results = run_edit(pipe, scene, mask, params, scorer=scorer)
    folder.mkdir(parents=True, exist_ok=True)
    save = lambda image, name, **kw: save_png_atomic(image, folder / name, overwrite=args.overwrite, **kw)
    save(scene, "input.png")
    save(mask, "mask.png")
    paths = [save(r.image, f"result-{rank + 1}.png", metadata=result_metadata(params, r, model))
             for rank, r in enumerate(results)]
    labels = ["input", f"mask: '{DEMO_PROMPT}'"] + [
        f"#{rank + 1} seed {r.seed}" + (f" clip {r.score:.3f}" if r.score is not None else "")
        for rank, r in enumerate(results)]
    grid = make_grid([scene, mask] + [r.image for r in results], labels, tile=192, columns=3)
    save(grid, "grid.png")
    return {"outputs": summarize(results, paths), "grid": str(folder / "grid.png"), "prompt": DEMO_PROMPT,
            "model": model, "seconds": round(time.perf_counter() - start, 3)}


def run_convert_command(args: argparse.Namespace) -> dict:
    from ..loading import convert_single_file

    start = time.perf_counter()
    folder = convert_single_file(args.checkpoint, args.output, config=args.config, xl=args.xl,
                                 overwrite=args.overwrite)
    return {"outputs": [{"path": str(folder)}], "seconds": round(time.perf_counter() - start, 3)}


def run_serve_command(args: argparse.Namespace) -> dict:
    from ..loading import TINY_RANDOM, default_model
    from ..params import check_range
    from .webapp import serve

    check_range("--port", args.port, 1, 65535)
    model = args.model or default_model()
    if model == TINY_RANDOM:
        notice("serving tiny random components (results are noise)"
               + ("" if args.model else ": no model given and no bundled model installed"))
    quiet_loading(args)
    serve(model, host=args.host, port=args.port, device=args.device, dtype=args.dtype, clip_model=args.clip_model,
          max_pixels=max_pixels(args),
          compile=args.compile, channels_last=args.channels_last, cpu_offload=args.cpu_offload,
          on_ready=lambda url: notice(f"serving on {url} (Ctrl-C to stop)"))
    return {"outputs": [], "model": model}


def run_reconstruct_command(args: argparse.Namespace) -> dict:
    from ..image_io import check_same_aspect, load_image, load_mask
    from ..params import check_range

    check_range("--feather", args.feather, 0, 64)
    check_range("--steps", args.steps, 1, 2000)
    check_range("--background-weight", args.background_weight, 0, 10000)
    paths = output_paths(args.output, len(args.results), args.overwrite)
    original = load_image(args.original)
    mask = check_same_aspect(original, load_mask(args.mask), image_name=args.original, mask_name=args.mask)
    results = [load_image(r) for r in args.results]
    for name, result in zip(args.results, results):
        if result.size != original.size:
            raise InputError(f"result '{name}' is {result.width}x{result.height} but the original is "
                             f"{original.width}x{original.height}: they must have the same size")

    from ..editing import edit_region, json_safe
    from ..image_io import save_png_atomic
    from ..ops.metrics import compute_metrics
    from ..ops.reconstruction import reconstruct_images

    region = edit_region(mask, args.invert_mask)
    if not region.any() or region.all():
        raise InputError("the mask is empty or covers the whole image: there is no background to reconstruct")
    start = time.perf_counter()
    vae = None
    if args.method in ("latent", "decoder"):
        from ..loading import load_vae

        quiet_loading(args)
        vae = load_vae(args.model, device=args.device)
    region_image = PIL.Image.fromarray(region.astype(np.uint8) * 255)
    restored = reconstruct_images(args.method, original, results, region_image, vae=vae, feather=args.feather,
                                  steps=args.steps, background_weight=args.background_weight, crop=args.crop,
                                  progress=True)
    outputs = []
    for source, image, path in zip(args.results, restored, paths):
        metadata = png_metadata_or_empty(source)
        metadata["bld_reconstruction"] = json.dumps({"method": args.method, "feather": args.feather,
                                                     "steps": args.steps, "background_weight": args.background_weight,
                                                     "crop": args.crop})
        save_png_atomic(image, path, metadata=metadata, overwrite=args.overwrite)
        outputs.append(json_safe({"path": str(path), "metrics": compute_metrics(original, image, region)}))
    return {"outputs": outputs, "method": args.method, "seconds": round(time.perf_counter() - start, 3)}


def png_metadata_or_empty(path: str) -> dict[str, str]:
    """A result's own text chunks (its bld parameters) when it is a PNG, else nothing."""
    from ..image_io import read_png_metadata

    try:
        return read_png_metadata(path)
    except InputError:
        return {}


def quiet_libraries() -> None:
    """No loading bars, advice or warnings from diffusers, transformers and the Hub (before they are imported);
    bld's own progress bars and notices stay."""
    for library in ("TRANSFORMERS", "DIFFUSERS", "HF_HUB"):
        os.environ.setdefault(f"{library}_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow the Hub's
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore")


def quiet_loading(args: argparse.Namespace) -> None:
    """diffusers' "Loading pipeline components" bar has no variable to turn it off: done here, just before
    a model loads (importing diffusers earlier would slow --help and bad-input errors)."""
    if not getattr(args, "verbose", False):
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False) or bool(os.environ.get("BLD_DEBUG"))
    if not verbose:
        quiet_libraries()
    show_library_notices()
    command = {"edit": run_edit_command, "outpaint": run_outpaint_command, "demo": run_demo_command,
               "reconstruct": run_reconstruct_command, "serve": run_serve_command, "convert": run_convert_command,
               "eval": run_eval_command, "batch": run_batch_command}[args.command]
    try:
        summary = command(args)
    except (InputError, ValueError) as exc:
        if os.environ.get("BLD_DEBUG"):
            raise
        print(f"bld: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "batch":
            print("bld: interrupted; finished rows are kept: rerun the same command to edit the rest", file=sys.stderr)
        else:
            print("bld: interrupted; nothing was written for unfinished results", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(summary))
    else:
        for output in summary["outputs"]:
            print(output["path"])
        if "grid" in summary:
            print(summary["grid"])
    return summary.get("exit_status", 0)


if __name__ == "__main__":
    sys.exit(main())
