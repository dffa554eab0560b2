"""One typed description of an edit's parameters.

`EditParams` holds every knob of a Blended Latent Diffusion edit with its default, its valid range and
a help line. The pipeline validates against it, the CLI builds its flags from it, the web app builds
its controls from it, and each saved result carries it as metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

LatentMaskMode = Literal["any", "nearest", "inside", "top-left"]
BackgroundNoise = Literal["fixed", "fresh"]
SchedulerName = Literal["ddim", "dpm++", "euler", "euler-a", "model"]
Reconstruction = Literal["none", "pixel", "poisson", "latent", "decoder"]
CropMode = Literal["auto", "off"]


@dataclass(frozen=True)
class Region:
    """One more region of an edit, beyond the main mask and prompt: what its mask should show, what it should
    not (None: the edit's negative prompt) and its strength (it joins the edit for the last `strength` of the
    kept steps, as a soft mask's gray level does; 1 = from the first kept step). Its mask is an input, passed
    alongside (the pipelines' and run_edit's `region_masks`)."""

    prompt: str
    negative_prompt: str | None = None
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ValueError(f"a region's prompt must be a string, got {type(self.prompt).__name__}")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ValueError(f"a region's negative_prompt must be a string or None, got "
                             f"{type(self.negative_prompt).__name__}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not (
                0 < self.strength <= 1):
            raise ValueError(f"a region's strength must be a number in (0, 1], got {self.strength!r}")
        object.__setattr__(self, "strength", float(self.strength))

    @classmethod
    def of(cls, value: Region | dict[str, Any] | str) -> Region:
        """A Region from a Region, a dict of its fields (as to_dict writes it) or a prompt."""
        if isinstance(value, Region):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown region field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            return cls(**value)
        raise ValueError(f"a region must be a Region, a dict or a prompt string, got {type(value).__name__}")


def _param(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           choices: tuple[str, ...] | None = None, flag: str | None = None) -> Any:
    """A dataclass field whose metadata carries the range, the choices and the help line."""
    meta = {"help": help, "low": low, "high": high, "choices": choices, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EditParams:
    """Parameters of one edit.

    The schedule's defaults are the paper's (50 DDIM steps, the first 0.25 skipped; guidance 7.5 for SD and
    5.0 for SDXL). Three differ from its official script (README, "The algorithm"): the 'any' latent mask
    (the script's nearest sampling drops thin strokes), one fixed background noise (as diffusers; the script
    draws it fresh each step) and pixel reconstruction (exact outside the mask; the paper's decoder fine-tune
    is 'decoder'). num_images is 4, to rank them, where the pipelines' num_images_per_prompt defaults to 1
    as in diffusers. A model folder may recommend values of its own (bld.model_defaults).
    """

    prompt: str = _param("", "What the masked region should show.")
    negative_prompt: str | None = _param(None, "What the masked region should not show.")
    num_inference_steps: int = _param(50, "Diffusion steps of the full schedule.", low=1, high=1000,
                                      flag="--steps")
    guidance_scale: float | None = _param(
        None, "Classifier-free guidance scale; 1 turns guidance off. Default: 7.5 for SD, 5.0 for SDXL and LDM, "
        "7.0 for SD3; for FLUX.1 the distilled guidance it takes as an input (3.5; one pass either way).",
        low=0.0, high=50.0, flag="--guidance")
    guidance_cutoff: float = _param(
        1.0, "Share of the kept steps that use guidance; the rest run the model once per result instead of twice "
        "(faster; diffusers' CFG cut-off). 1 = every step.", low=0.0, high=1.0)
    skip_fraction: float = _param(
        0.25, "Fraction of the schedule skipped before blending starts (the paper's blending_start_percentage).",
        low=0.0, high=0.99)
    num_images: int = _param(4, "Number of results.", low=1, high=64, flag="--num-results")
    seed: int | None = _param(None, "Seed of the first result; result k uses seed + k. Default: random.",
                              low=0, high=2**63 - 1)
    invert_mask: bool = _param(False, "Edit outside the mask instead (background replacement).")
    soft_mask: bool = _param(
        False, "Read the mask's gray levels as per-pixel strength: a pixel of gray s joins the edit for the last s "
        "of the kept steps and the result is mixed into the input with s as alpha (0 keeps the input). A binary "
        "mask edits as without it.")
    mask_grow: int = _param(0, "Grow the mask by this many pixels at the input's size (negative shrinks it).",
                            low=-512, high=512)
    mask_blur: float = _param(
        0.0, "Blur the mask's edge over this many pixels at the input's size (Gaussian sigma = px / 2); the blurred "
        "edge is a soft mask, its gray levels strengths, as with --soft-mask.", low=0.0, high=512.0)
    crop: CropMode = _param(
        "auto", "Crop-and-stitch: 'auto' edits a padded box around each part of the mask at the model's native "
        "resolution (the whole image when that covers most of it, or when the image is no larger than native) and "
        "stitches it back; 'off' edits the whole image at its own size.", choices=("auto", "off"))
    crop_padding: float = _param(
        0.25, "Context around the mask in each crop, on each side, as a share of the mask part's longer side.",
        low=0.0, high=4.0)
    height: int | None = _param(
        None, "Height to edit at (each crop's, with crop 'auto'), a multiple of the VAE factor. Default: a "
        "native-size bucket (crop 'auto'), the input's own, snapped (crop 'off').", low=8, high=4096)
    width: int | None = _param(
        None, "Width to edit at (each crop's, with crop 'auto'), a multiple of the VAE factor. Default: a "
        "native-size bucket (crop 'auto'), the input's own, snapped (crop 'off').", low=8, high=4096)
    mask_dilation_iterations: int = _param(
        0, "Progressive mask shrinking for thin masks: N dilations (kernels 3+2i), largest first; 0 = off.",
        low=0, high=10, flag="--shrink-mask")
    latent_mask_mode: LatentMaskMode = _param(
        "any", "Mask downsampling: 'any' keeps every latent cell the mask touches; 'nearest' samples each cell's "
        "center pixel (the paper's); 'inside' keeps the cells the mask covers whole (a thin part on its own: the "
        "cells it touches); 'top-left' samples each cell's first pixel (diffusers' inpaint pipeline).",
        choices=("any", "nearest", "inside", "top-left"))
    background_noise: BackgroundNoise = _param(
        "fixed", "Noise for the background: 'fixed' (one noise, as diffusers) or 'fresh' each step (official code).",
        choices=("fixed", "fresh"))
    reconstruction: Reconstruction = _param(
        "pixel", "Background reconstruction after decoding (paper section 2): none; pixel (paste the original "
        "outside the mask); poisson (seamless cloning); latent (optimize the latent); decoder (fine-tune the "
        "VAE decoder per image, the paper's method, slowest).",
        choices=("none", "pixel", "poisson", "latent", "decoder"))
    feather: int = _param(0, "Blend the edit into the input over this many pixels inside the mask's edge (pixel "
                          "reconstruction, and the paste after latent or decoder reconstruction).",
                          low=0, high=64)
    reconstruction_steps: int = _param(75, "Optimization steps of latent and decoder reconstruction.",
                                       low=1, high=2000)
    reconstruction_background_weight: float = _param(
        100.0, "Latent/decoder reconstruction: weight of the background term of the loss (the paper's 100); a "
        "lower one keeps the edited region closer to its first decoding.", low=0.0, high=10000.0,
        flag="--background-weight")
    paste_outside: bool = _param(
        True, "After latent or decoder reconstruction, put the input's own pixels back outside the mask, so the "
        "rest of the image is exactly the input; off: the raw decoding everywhere (the paper's).")
    reconstruction_crop: bool = _param(
        False, "Run latent/decoder reconstruction on a crop around the mask: cost follows the edited area.")
    rank: bool = _param(True, "Sort results best first by CLIP text match inside the mask (needs a CLIP model).")
    scheduler: SchedulerName = _param(
        "ddim", "Sampler: ddim, dpm++, euler, euler-a, or 'model' for the one saved with the model.",
        choices=("ddim", "dpm++", "euler", "euler-a", "model"))
    regions: tuple[Region, ...] = _param(
        (), "More regions edited in the same pass, each with its own prompt (its masks are inputs); where regions "
        "overlap, the later one wins. Not a flag: the CLI's --region MASK PROMPT.")

    def __post_init__(self) -> None:
        # regions may come as a list of Regions, dicts or prompts (JSON, a caller's list): stored as Regions
        object.__setattr__(self, "regions", regions_of(self.regions))
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EditParams:
        """Build from a dict, refusing unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown edit parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


NOT_CONTROLS = ("regions",)
"""EditParams fields that are no flag or control of their own (a region comes with its mask, an input)."""


def regions_of(values: Any) -> tuple[Region, ...]:
    """A tuple of Regions from a list or tuple of Regions, dicts or prompts."""
    if isinstance(values, (str, dict, Region)) or not isinstance(values, (list, tuple)):
        raise ValueError(f"regions must be a list of regions, got {type(values).__name__}")
    return tuple(Region.of(v) for v in values)


def field_flag(param: dataclasses.Field) -> str:
    """The command-line flag of an EditParams field: its own (e.g. --steps) or --field-name."""
    return param.metadata["flag"] or "--" + param.name.replace("_", "-")


def field_value_type(param: dataclasses.Field) -> type:
    """int, float or str: the type a front end parses a field's text into."""
    kind = str(param.type)
    return int if kind.startswith("int") else float if kind.startswith("float") else str


def check_range(name: str, value: Any, low: float | None, high: float | None) -> None:
    """Raise ValueError naming `name` when `value` lies outside [low, high]."""
    if low is not None and value < low or high is not None and value > high:
        raise ValueError(f"{name}={value!r} is out of range: it must lie in [{low}, {high}]")


def validate(params: EditParams) -> None:
    """Check every field against its declared type, range and choices."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        meta = f.metadata
        if value is None or f.name in NOT_CONTROLS:
            continue
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                raise ValueError(f"{f.name}={value!r} is not one of {', '.join(meta['choices'])}")
            continue
        if f.name in ("prompt", "negative_prompt"):
            if not isinstance(value, str):
                raise ValueError(f"{f.name} must be a string, got {type(value).__name__}")
            continue
        if isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, got {value!r}")
            continue
        numeric = (int,) if "int" in str(f.type) else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            kind = "an integer" if numeric == (int,) else "a number"
            raise ValueError(f"{f.name} must be {kind}, got {value!r}")
        if value != value:  # NaN
            raise ValueError(f"{f.name} must be a number, got NaN")
        check_range(f.name, value, meta["low"], meta["high"])


DEFAULTS = EditParams()
