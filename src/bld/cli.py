"""`bld` command line: a thin layer over the pipeline. Flags come from EditParams."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path

from .image_io import MAX_PIXELS, InputError
from .params import EditParams

MAX_EDIT_PIXELS = 2048 * 2048
RUNTIME_FLAGS = ("model", "device", "dtype")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits with 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(field: dataclasses.Field) -> str:
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


def _value_type(field: dataclasses.Field):
    kind = str(field.type)
    return int if kind.startswith("int") else float if kind.startswith("float") else str


def add_param_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per EditParams field (the prompt is positional), with its default, range and help."""
    group = parser.add_argument_group("edit parameters")
    for field in dataclasses.fields(EditParams):
        if field.name == "prompt":
            continue
        meta, flag = field.metadata, _flag(field)
        help_text = meta["help"]
        if meta["low"] is not None:
            help_text += f" Range [{meta['low']}, {meta['high']}]."
        if field.default is not None and not isinstance(field.default, bool):
            help_text += f" Default: {field.default}."
        if isinstance(field.default, bool):
            group.add_argument(flag, dest=field.name, action="store_true", help=help_text)
        elif meta["choices"]:
            group.add_argument(flag, dest=field.name, choices=meta["choices"], default=field.default,
                               help=help_text)
        else:
            group.add_argument(flag, dest=field.name, type=_value_type(field), default=field.default,
                               metavar=field.name.upper(), help=help_text)


def params_from_args(args: argparse.Namespace) -> EditParams:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(EditParams)}
    return EditParams(**values)


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="diffusers model folder or Hugging Face Hub id (SD 1.x/2.x or SDXL). "
                             "Default: the bundled model (tiny random components until it ships).")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, float32 elsewhere), float32, "
                                                        "float16, bfloat16")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


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
    add_param_flags(edit)
    add_runtime_flags(edit)

    demo = sub.add_parser("demo", help="edit a built-in scene and write a grid image you can look at")
    demo.add_argument("-o", "--output", default="bld-demo", help="folder for the results (default: bld-demo)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the first result (default: 0)")
    add_runtime_flags(demo)
    return parser


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


def check_edit_size(image, params: EditParams) -> None:
    if params.width is None and params.height is None and image.width * image.height > MAX_EDIT_PIXELS:
        raise InputError(f"the image is {image.width}x{image.height}; editing above {MAX_EDIT_PIXELS // 2**20} MP "
                         f"at full size needs too much memory: pass --width (or --height) to edit at a smaller "
                         f"size; the result is resized back")


def load_for_args(args, params: EditParams | None):
    from .loading import default_model, load_pipeline

    model = args.model or default_model()
    pipe = load_pipeline(model, device=args.device, dtype=args.dtype,
                         scheduler=params.scheduler if params else "ddim")
    pipe.set_progress_bar_config(file=sys.stderr, leave=False, desc="denoising")
    return pipe, model


def notice(message: str) -> None:
    print(f"bld: {message}", file=sys.stderr)


def run_edit_command(args: argparse.Namespace) -> dict:
    from .editing import result_metadata, run_edit, with_seed
    from .image_io import check_same_aspect, load_image, load_mask, save_png_atomic
    from .loading import TINY_RANDOM

    params = with_seed(params_from_args(args))
    paths = output_paths(args.output, params.num_images, args.overwrite)
    image = load_image(args.image, max_pixels=MAX_PIXELS)
    mask = check_same_aspect(image, load_mask(args.mask, max_pixels=MAX_PIXELS),
                             image_name=repr(args.image), mask_name=repr(args.mask))
    check_edit_size(image, params)
    start = time.perf_counter()
    pipe, model = load_for_args(args, params)
    if model == TINY_RANDOM:
        notice("no model given and no bundled model installed: using tiny random components (results are noise)")
    if params.guidance_scale is None:
        params = dataclasses.replace(params, guidance_scale=pipe.default_guidance_scale)
    results = run_edit(pipe, image, mask, params)
    for result, path in zip(results, paths):
        save_png_atomic(result.image, path, metadata=result_metadata(params, result, model),
                        overwrite=args.overwrite)
    return {"outputs": [{"path": str(p), "seed": r.seed} for r, p in zip(results, paths)],
            "params": params.to_dict(), "model": model, "device": str(pipe.device),
            "seconds": round(time.perf_counter() - start, 3)}


def run_demo_command(args: argparse.Namespace) -> dict:
    from .demo_scene import demo_scene
    from .editing import result_metadata, run_edit
    from .grid import make_grid
    from .image_io import save_png_atomic
    from .loading import TINY_RANDOM

    folder = Path(args.output)
    scene, mask, prompt = demo_scene()
    params = EditParams(prompt=prompt, num_inference_steps=20, seed=args.seed)
    names = ["input.png", "mask.png", "grid.png"] + [f"result-{k + 1}.png" for k in range(params.num_images)]
    if not args.overwrite:
        existing = [folder / n for n in names if (folder / n).exists()]
        if existing:
            raise InputError(f"'{existing[0]}' already exists: pass --overwrite or choose another -o")
    start = time.perf_counter()
    pipe, model = load_for_args(args, params)
    if model == TINY_RANDOM:
        notice("the bundled model is not installed yet: this demo runs tiny random components, so the edited "
               "region shows noise; pass --model with a Stable Diffusion folder for a real edit")
    params = dataclasses.replace(params, guidance_scale=params.guidance_scale or pipe.default_guidance_scale)
    results = run_edit(pipe, scene, mask, params)
    folder.mkdir(parents=True, exist_ok=True)
    save = lambda image, name, **kw: str(save_png_atomic(image, folder / name, overwrite=args.overwrite, **kw))
    files = [save(scene, "input.png"), save(mask, "mask.png")]
    files += [save(r.image, f"result-{r.index + 1}.png", metadata=result_metadata(params, r, model))
              for r in results]
    labels = ["input", "mask (white = edit)"] + [f"result {r.index + 1} (seed {r.seed})" for r in results]
    grid = make_grid([scene, mask] + [r.image for r in results], labels, tile=192, columns=3)
    files.append(save(grid, "grid.png"))
    return {"outputs": [{"path": f} for f in files], "prompt": prompt, "model": model,
            "seconds": round(time.perf_counter() - start, 3)}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    command = {"edit": run_edit_command, "demo": run_demo_command}[args.command]
    try:
        summary = command(args)
    except (InputError, ValueError) as exc:
        if os.environ.get("BLD_DEBUG"):
            raise
        print(f"bld: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bld: interrupted; nothing was written for unfinished results", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary))
    else:
        for output in summary["outputs"]:
            print(output["path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
