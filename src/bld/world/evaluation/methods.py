"""The methods the evaluation compares, as named callables over one task: `method.run(ctx, task, seed)`.

Every method makes `ctx.num_images` results from the same per-task seed (result k uses seed + k, each
with its own CPU generator), so methods see the same noise, and ranks them best first with the same
CLIP scorer when there is one.

- BLD variants go through `bld.editing.run_edit` with `EditParams`: the default settings, the paper's
  nearest-neighbour latent mask, other skipped fractions, progressive shrinking.
- Background reconstructions reuse one BLD run: its final latents are captured and handed to the
  pipeline's own `finish` with each reconstruction method (`reconstruct`).
- Baselines reuse the blended loop through `RegenerationPipeline`, a subclass that switches the
  per-step blend off: "sdedit" regenerates the whole image from the source noised to the first kept
  step and pastes the input's pixels outside the mask afterwards; "blend-once" blends one time, right
  after the first kept step, then lets the whole latent evolve freely, and pastes the same way.
- diffusers' `StableDiffusionInpaintPipeline` built from the same components (the 4-channel UNet),
  with strength = 1 - skip_fraction; its output is taken as diffusers gives it (no paste).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import PIL.Image
import torch
from diffusers.utils.torch_utils import randn_tensor

from ...editing import run_edit
from ...ops.blending import blend
from ...params import EditParams
from ...pipelines.blended import Finishing
from ...pipelines.stable_diffusion import BlendedLatentDiffusionPipeline
from ...ranking import rank
from ..scenes import EditTask

RECONSTRUCTIONS = ("none", "pixel", "poisson", "latent", "decoder")


class RegenerationPipeline(BlendedLatentDiffusionPipeline):
    """The blended pipeline with the per-step blend switched off, for the regenerate-and-paste baselines.

    `blend_at="never"` (SDEdit): the latent mask is all ones, so every step keeps the model's latent
    everywhere, and the final latent differs from the source outside the mask too; the pixel
    reconstruction of `finish` then pastes the input outside the mask. `blend_at="first"`: the same,
    except that right after the first kept step the latent is blended once with the source noised to
    the next timestep (fresh noise drawn from the results' own generators)."""

    blend_at: str = "never"

    def blended_denoise(self, z0, mask, timesteps, predict_noise, generator, fresh_noise,
                        mask_dilation_iterations=0, callback_on_step_end=None, **loop_options):
        user_callback = callback_on_step_end

        def blend_once(pipe, i, t, state):
            if i == 0 and len(timesteps) > 1:
                noise = randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
                background = self.scheduler.add_noise(z0, noise, timesteps[1:2])
                state = {**state, "latents": blend(state["latents"], background, mask)}
            out = user_callback(pipe, i, t, state) if user_callback is not None else {}
            return {"latents": state["latents"], **(out or {})}

        callback = blend_once if self.blend_at == "first" else user_callback
        return super().blended_denoise(z0, torch.ones_like(mask), timesteps, predict_noise, generator, fresh_noise,
                                       0, callback, **loop_options)


@dataclass
class MethodOutput:
    """A method's results on one task, best first."""

    images: list[PIL.Image.Image]
    seeds: list[int]
    scores: list[float | None]
    seconds: float  # wall time of the whole batch, ranking included
    failed: str | None = None  # why no edit was made (the images are then the unchanged source)
    latents: torch.Tensor | None = None  # final latents in ranked order (kept for reconstruction variants)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalContext:
    """What every method needs: the pipeline, the ranking scorer and the shared settings."""

    pipe: BlendedLatentDiffusionPipeline
    scorer: Any = None
    steps: int = 50
    num_images: int = 4
    guidance_scale: float | None = None  # None: the pipeline's default
    skip_fraction: float = 0.25
    shrink: int = 3
    reconstruction_steps: int = 75
    reconstruct_top: int = 1
    _regen: dict = field(default_factory=dict, repr=False)
    _inpaint: Any = field(default=None, repr=False)

    @property
    def guidance(self) -> float:
        return self.pipe.default_guidance_scale if self.guidance_scale is None else self.guidance_scale

    def params(self, task: EditTask, seed: int, **overrides) -> EditParams:
        """The EditParams of a BLD run on `task` (its mask is the edited region already: no inversion)."""
        values = dict(prompt=task.prompt, num_inference_steps=self.steps, guidance_scale=self.guidance,
                      skip_fraction=self.skip_fraction, num_images=self.num_images, seed=seed,
                      reconstruction_steps=self.reconstruction_steps, rank=self.scorer is not None)
        values.update(overrides)
        return EditParams(**values)

    def _components(self) -> dict:
        components = dict(self.pipe.components)
        components["scheduler"] = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        return components

    def regeneration_pipe(self, blend_at: str) -> RegenerationPipeline:
        if blend_at not in self._regen:
            pipe = RegenerationPipeline(**self._components(), requires_safety_checker=False)
            pipe.blend_at = blend_at
            pipe.set_progress_bar_config(disable=True)
            self._regen[blend_at] = pipe
        return self._regen[blend_at]

    def inpaint_pipe(self):
        if self._inpaint is None:
            from diffusers import StableDiffusionInpaintPipeline

            components = self._components()
            components.pop("image_encoder", None)
            components["safety_checker"] = None
            self._inpaint = StableDiffusionInpaintPipeline(**components, requires_safety_checker=False)
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint


def unchanged(task: EditTask, n: int, seed: int, reason: str, seconds: float = 0.0) -> MethodOutput:
    """What a user is left with when a method refuses the task: the source, n times."""
    return MethodOutput([task.image.copy() for _ in range(n)], [seed + k for k in range(n)], [None] * n,
                        seconds, failed=reason)


def run_bld(ctx: EvalContext, task: EditTask, seed: int, *, pipe=None, keep_latents: bool = False,
            region_masks=(), **overrides) -> MethodOutput:
    """One BLD run through `run_edit` with ctx.params(...) and `overrides` (EditParams fields); with
    `regions` among them, `region_masks` holds their masks."""
    pipe = pipe or ctx.pipe
    params = ctx.params(task, seed, **overrides)
    captured: dict[str, torch.Tensor] = {}

    def capture(_pipe, i, t, state):
        captured["latents"] = state["latents"]
        return {}

    start = time.perf_counter()
    try:
        results = run_edit(pipe, task.image, task.mask_image(), params, scorer=ctx.scorer,
                           callback_on_step_end=capture if keep_latents else None, region_masks=region_masks)
    except ValueError as exc:
        if "vanishes" not in str(exc):
            raise
        return unchanged(task, params.num_images, seed, "mask vanishes at the latent resolution",
                         time.perf_counter() - start)
    seconds = time.perf_counter() - start
    latents = captured["latents"][[r.index for r in results]] if keep_latents else None
    return MethodOutput([r.image for r in results], [r.seed for r in results], [r.score for r in results],
                        seconds, latents=latents)


def run_diffusers_inpaint(ctx: EvalContext, task: EditTask, seed: int) -> MethodOutput:
    """diffusers' StableDiffusionInpaintPipeline on the same components, seeds and schedule, ranked by CLIP."""
    pipe = ctx.inpaint_pipe()
    seeds = [seed + k for k in range(ctx.num_images)]
    start = time.perf_counter()
    images = pipe(task.prompt, image=task.image, mask_image=task.mask_image(), height=task.image.height,
                  width=task.image.width, strength=1.0 - ctx.skip_fraction, num_inference_steps=ctx.steps,
                  guidance_scale=ctx.guidance, num_images_per_prompt=ctx.num_images,
                  generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pil").images
    scores: list[float | None] = [None] * len(images)
    if ctx.scorer is not None:
        raw = ctx.scorer.score(images, task.prompt, task.mask)
        order = rank(raw)
        images, seeds, scores = [images[k] for k in order], [seeds[k] for k in order], [raw[k] for k in order]
    return MethodOutput(images, seeds, scores, time.perf_counter() - start)


def reconstruct(ctx: EvalContext, task: EditTask, base: MethodOutput, method: str,
                top: int | None = None) -> MethodOutput:
    """The background reconstruction `method` applied to `base`'s final latents (its first `top` results,
    all when None), through the pipeline's own decode-and-finish step. Keeps base's ranking order;
    `seconds` is base's diffusion time for those results plus this reconstruction's own time."""
    if base.failed:
        n = len(base.images) if top is None else min(top, len(base.images))
        return unchanged(task, n, base.seeds[0], base.failed)
    latents = base.latents if top is None else base.latents[:top]
    n = latents.shape[0]
    pipe = ctx.pipe
    start = time.perf_counter()
    prepared = pipe.prepare_image_and_mask(task.image, task.mask_image(), None, None, False)
    # the raw decoding, as the paper compares the methods (no paste of the input outside the mask)
    finishing = Finishing(method, reconstruction_steps=ctx.reconstruction_steps, paste_outside=False)
    out = pipe.finish(latents, prepared, "pil", task.prompt, finishing, latents.dtype)
    own = time.perf_counter() - start
    shared = base.seconds * n / len(base.images)
    return MethodOutput(list(out.images), base.seeds[:n], base.scores[:n], shared + own,
                        extra={"reconstruction_seconds": own})


@dataclass(frozen=True)
class Method:
    """A named method: `run(ctx, task, seed) -> MethodOutput`. `group` places it in the report's tables."""

    name: str
    label: str
    suite: str  # "main" or "thin"
    group: str  # "bld", "baseline", "skip", "thin"
    description: str
    run: Callable[[EvalContext, EditTask, int], MethodOutput]
    settings: dict = field(default_factory=dict)  # EditParams overrides, for the record


def bld_method(name: str, label: str, suite: str, group: str, description: str, keep_latents: bool = False,
               **overrides) -> Method:
    def run(ctx, task, seed):
        return run_bld(ctx, task, seed, keep_latents=keep_latents, **overrides)

    return Method(name, label, suite, group, description, run, dict(overrides))


def _regeneration(blend_at: str):
    def run(ctx, task, seed):
        return run_bld(ctx, task, seed, pipe=ctx.regeneration_pipe(blend_at), reconstruction="pixel")

    return run


def skip_method_name(fraction: float) -> str:
    return f"bld-skip-{fraction:g}"


def main_methods(skip_fractions=(), default_skip: float = 0.25) -> list[Method]:
    """The main suite's methods; `skip_fractions` other than the default add BLD runs for the skip plot."""
    methods = [
        bld_method("bld", "BLD (default)", "main", "bld",
                   "Blended Latent Diffusion, default settings: 'any' latent mask, pixel reconstruction",
                   keep_latents=True),
        bld_method("bld-nearest", "BLD, nearest latent mask", "main", "bld",
                   "BLD with the paper's nearest-neighbour latent mask", latent_mask_mode="nearest"),
        Method("sdedit-paste", "SDEdit + pixel paste", "main", "baseline",
               "whole image regenerated from the noised source (no blending), input pasted outside the mask",
               _regeneration("never"), {"reconstruction": "pixel"}),
        Method("blend-once", "blend once at start + paste", "main", "baseline",
               "one blend after the first kept step, then free denoising; input pasted outside the mask",
               _regeneration("first"), {"reconstruction": "pixel"}),
        Method("diffusers-inpaint", "diffusers inpaint (same UNet)", "main", "baseline",
               "diffusers StableDiffusionInpaintPipeline with the same 4-channel UNet, raw output",
               run_diffusers_inpaint),
    ]
    for f in skip_fractions:
        if abs(f - default_skip) > 1e-9:
            methods.append(bld_method(skip_method_name(f), f"BLD, skip {f:g}", "main", "skip",
                                      f"BLD default with skip_fraction={f:g}", skip_fraction=float(f)))
    return methods


def thin_methods(shrink: int) -> list[Method]:
    """The thin suite's methods: both latent masks, with and without progressive shrinking."""
    return [
        bld_method("thin-bld", "BLD (default: any, no shrinking)", "thin", "thin", "BLD default settings"),
        bld_method("thin-bld-shrink", f"BLD + shrinking ({shrink})", "thin", "thin",
                   f"BLD with progressive mask shrinking, {shrink} dilations", mask_dilation_iterations=shrink),
        bld_method("thin-nearest", "BLD, nearest mask", "thin", "thin", "BLD with the nearest latent mask",
                   latent_mask_mode="nearest"),
        bld_method("thin-nearest-shrink", f"BLD, nearest mask + shrinking ({shrink})", "thin", "thin",
                   f"the paper's setting: nearest latent mask with {shrink} dilations",
                   latent_mask_mode="nearest", mask_dilation_iterations=shrink),
    ]


def reconstruction_name(method: str) -> str:
    return f"recon-{method}"


def describe_method(method: Method) -> dict:
    return {"label": method.label, "suite": method.suite, "group": method.group,
            "description": method.description, "settings": dict(method.settings)}


def settings_record(ctx: EvalContext) -> dict:
    """The shared settings, as recorded in the report."""
    fields = ("steps", "num_images", "skip_fraction", "shrink", "reconstruction_steps", "reconstruct_top")
    return {**{f: getattr(ctx, f) for f in fields}, "guidance_scale": ctx.guidance,
            "scheduler": type(ctx.pipe.scheduler).__name__, "ranked": ctx.scorer is not None}

