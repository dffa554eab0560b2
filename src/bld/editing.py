"""Run an edit from EditParams: one seed per result, and the metadata each saved result carries."""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from . import __version__
from .ops.cropping import bounding_box
from .ops.masks import needs_shaping, shape_mask
from .ops.metrics import compute_metrics
from .ops.regions import RegionLayout, region_view, shape_regions
from .params import EditParams
from .ranking import combine_region_scores

METADATA_KEY = "bld"


@dataclass
class EditResult:
    image: PIL.Image.Image
    seed: int
    index: int  # position in the generated batch (result k used seed + k)
    score: float | None = None  # CLIP text match inside the mask, when ranked (regions: the worst region's)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    crops: list[dict] = dataclasses.field(default_factory=list)  # the boxes edited and their sizes
    region_scores: list[float] | None = None  # with regions, when ranked: each region's own score, the main first


def with_seed(params: EditParams) -> EditParams:
    """The params with a concrete seed: the given one, or a fresh random one to record."""
    return params if params.seed is not None else dataclasses.replace(params, seed=secrets.randbelow(2**31))


def result_seeds(params: EditParams) -> list[int]:
    """Result k uses seed + k, so any result can be remade alone with num_images=1."""
    return [params.seed + k for k in range(params.num_images)]


def run_edit(pipe, image, mask, params: EditParams, scorer=None, callback_on_step_end=None,
             region_masks=()) -> list[EditResult]:
    """Edit `image` inside `mask` (both PIL) with a pipeline; `params.seed` must be set (see with_seed).

    Each result has its own CPU generator, so results do not depend on the device or the batch size.
    With a scorer and params.rank, results come best first with their scores. Each result carries its
    metrics (background PSNR and SSIM, edge color difference, and the text match when scored).
    With params.regions, `region_masks` holds their masks (PIL, one per region): the background numbers are
    measured outside every region, the text match of each region inside its own pixels, and `text_match`
    and the score are the worst region's (bld.ranking.combine_region_scores).
    """
    if params.seed is None:
        raise ValueError("run_edit needs params with a seed: call with_seed(params) first")
    seeds = result_seeds(params)
    scorer = scorer if params.rank else None
    output = pipe(
        params.prompt, image, mask,
        num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale,
        guidance_cutoff=params.guidance_cutoff,
        skip_fraction=params.skip_fraction, negative_prompt=params.negative_prompt,
        num_images_per_prompt=params.num_images, generator=[torch.Generator().manual_seed(s) for s in seeds],
        invert_mask=params.invert_mask, height=params.height, width=params.width, crop=params.crop,
        crop_padding=params.crop_padding, soft_mask=params.soft_mask, mask_grow=params.mask_grow,
        mask_blur=params.mask_blur,
        latent_mask_mode=params.latent_mask_mode, background_noise=params.background_noise,
        mask_dilation_iterations=params.mask_dilation_iterations, reconstruction=params.reconstruction,
        feather=params.feather, reconstruction_steps=params.reconstruction_steps,
        reconstruction_crop=params.reconstruction_crop, paste_outside=params.paste_outside,
        reconstruction_background_weight=params.reconstruction_background_weight, scorer=scorer,
        callback_on_step_end=callback_on_step_end, regions=params.regions, region_masks=list(region_masks),
    )
    order = output.order or list(range(len(output.images)))
    scores = output.scores or [None] * len(order)
    region_scores = output.region_scores or [None] * len(order)
    crops = output.crops or []
    windows = stitched_boxes(crops, image.size)
    if not params.regions:
        edited_region = shaped_region(mask, params, image.size)
        return [EditResult(img, seeds[k], k, score, compute_metrics(image, img, edited_region, prompt=params.prompt,
                                                                    scorer=scorer, windows=windows), crops)
                for img, k, score in zip(output.images, order, scores)]
    layout = edit_layout(mask, region_masks, params, image.size)
    results = []
    for img, k, score, per_region in zip(output.images, order, scores, region_scores):
        metrics = compute_metrics(image, img, layout.union, windows=windows)
        if scorer is not None:
            metrics["text_match"] = combine_region_scores(region_text_matches(scorer, img, layout, params, windows))
        results.append(EditResult(img, seeds[k], k, score, metrics, crops, per_region))
    return results


def edit_layout(mask, region_masks, params: EditParams, size: tuple[int, int]) -> RegionLayout:
    """The regions of an edit with params.regions as the pipeline lays them out (bld.ops.regions), at `size`."""
    return shape_regions([mask, *region_masks], size, [1.0] + [region.strength for region in params.regions],
                         soft_mask=params.soft_mask, grow=params.mask_grow, blur=params.mask_blur)


def region_text_matches(scorer, image, layout: RegionLayout, params: EditParams, windows=None) -> list[float]:
    """Each region's text match: its own prompt inside its own pixels (seen through the crops that hold it)."""
    prompts = [params.prompt, *(region.prompt for region in params.regions)]
    matches = []
    for index, prompt in enumerate(prompts):
        pixels = layout.region(index)
        view = bounding_box(region_view(pixels, windows)) if windows else None
        matches.append(float(scorer.text_match(image, prompt, pixels, view)))
    return matches


def stitched_boxes(crops: list[dict], size: tuple[int, int]) -> list[tuple[int, int, int, int]] | None:
    """The boxes of a crop-and-stitch edit (outside them the result is the input), or None when the whole
    image was edited."""
    boxes = [tuple(c["box"]) for c in crops]
    return None if not boxes or boxes == [(0, 0, *size)] else boxes


GENERAL_VOCABULARY = 10_000
"""A tokenizer with more tokens than this (CLIP's has 49,408) spells any word from pieces: no word is unknown."""


def unknown_words(tokenizer, prompt: str) -> tuple[list[str], list[str]]:
    """(the prompt's words a small word-level tokenizer has no token for, the words it has), or ([], []) for
    a general-purpose tokenizer. The bundled model's tokenizer knows its caption grammar only; another word is
    spelled from fragments the model never learned, and the edit draws something else without a word."""
    if tokenizer is None or len(tokenizer) > GENERAL_VOCABULARY:
        return [], []
    words = [w.strip(".,;:!?\"'()").lower() for w in prompt.split()]
    unknown = [w for w in dict.fromkeys(words) if w and len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    known = sorted({token[:-4] for token in tokenizer.get_vocab()  # whole words; single letters are byte fallbacks
                    if token.endswith("</w>") and token[:-4].isalpha() and len(token) > 5})
    if not known:  # no whole words at all (a character-level test tokenizer): not a word-level vocabulary
        return [], []
    return unknown, known


def shaped_region(mask: PIL.Image.Image, params: EditParams, size: tuple[int, int]) -> np.ndarray:
    """The pixels an edit with `params` may change, as the pipeline shapes the mask: edit_region's, or with
    mask_grow, mask_blur or soft_mask every pixel of strength above 0 (bld.ops.masks)."""
    if needs_shaping(params.soft_mask, params.mask_grow, params.mask_blur):
        return shape_mask(mask, size, invert=params.invert_mask, soft_mask=params.soft_mask,
                          grow=params.mask_grow, blur=params.mask_blur).region
    return edit_region(mask, params.invert_mask, size)


def edit_region(mask: PIL.Image.Image, invert: bool, size: tuple[int, int] | None = None) -> np.ndarray:
    """The region actually edited, as a boolean (H, W) array: the mask thresholded at half, inverted if asked,
    resized (nearest) to `size` (width, height) when given and different, as the pipeline does."""
    if size is not None and mask.size != tuple(size):
        mask = mask.convert("L").resize(tuple(size), PIL.Image.NEAREST)
    region = np.asarray(mask.convert("L")) >= 128
    return ~region if invert else region


def result_metadata(params: EditParams, result: EditResult, model: str) -> dict[str, str]:
    """PNG text chunks: `bld`, the full parameters with this result's own seed, the model's name and the bld
    version (what remakes the result), and `parameters`, the same in the text that AUTOMATIC1111, ComfyUI's
    readers and image browsers show. No `prompt` chunk: ComfyUI reads one as its own workflow."""
    own = dataclasses.replace(params, seed=result.seed, num_images=1)
    name = model_name(model)
    record = {"params": own.to_dict(), "batch_seed": params.seed, "index": result.index, "model": name,
              "score": result.score, "metrics": result.metrics, "crops": result.crops, "bld_version": __version__}
    if result.region_scores is not None:
        record["region_scores"] = result.region_scores
    return {METADATA_KEY: json.dumps(json_safe(record), sort_keys=True), "parameters": a1111_parameters(own, name)}


def model_name(model: str) -> str:
    """How a result names its model: a Hub id as given, a local folder by its name (not the user's path),
    the bundled model as 'bld-bundled'."""
    from .model_defaults import BUNDLED_MODEL_DIR

    path = Path(model)
    if path.is_dir():
        return "bld-bundled" if path.resolve() == BUNDLED_MODEL_DIR.resolve() else path.resolve().name
    return model


def a1111_parameters(params: EditParams, model: str) -> str:
    """The settings as AUTOMATIC1111 writes them: prompt, 'Negative prompt: ...', then 'Key: value, ...'.
    Denoising strength is the kept share of the schedule (1 - skip_fraction), as in img2img."""
    settings = {
        "Steps": params.num_inference_steps, "Sampler": params.scheduler,
        "CFG scale": params.guidance_scale, "Seed": params.seed,
        "Size": f"{params.width}x{params.height}" if params.width and params.height else None,
        "Model": model, "Denoising strength": round(1 - params.skip_fraction, 4),
        "Mask mode": "Inpaint not masked" if params.invert_mask else None,
        "Blended latent mask": params.latent_mask_mode, "Reconstruction": params.reconstruction,
        "Version": f"bld {__version__}",
    }
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in settings.items() if value is not None))
    return "\n".join(lines)


def json_safe(value):
    """Replace non-finite floats (a PSNR of identical pixels is inf) by the strings 'inf', '-inf', 'nan'."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def params_from_metadata(text_chunks: dict[str, str]) -> EditParams:
    """The EditParams that remake one saved result (its own seed, one image)."""
    if METADATA_KEY not in text_chunks:
        raise ValueError("this PNG carries no bld parameters")
    return EditParams.from_dict(json.loads(text_chunks[METADATA_KEY])["params"])
