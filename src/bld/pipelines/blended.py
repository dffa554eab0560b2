"""What every blended pipeline shares: input preparation, the source latent and the blended loop.

The loop reaches the sampler through a few hooks (noised_source, scale_model_input, blended_timesteps,
size_multiple, denoiser) that the DDPM-family pipelines (SD, SDXL, LDM) take from here and the
flow-matching ones (SD3, FLUX.1; bld.pipelines.flow_matching) override."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import PNDMScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..ops.blending import binarize_mask, blend, latent_mask, num_skipped_steps, phase_of_step, shrinking_masks
from ..ops.cropping import Crop, bounding_box, buckets, plan_crops
from ..ops.masks import needs_shaping, shape_mask, soft_latent_masks
from ..ops.reconstruction import pixel_blend, reconstruct_background
from ..ops.regions import RegionLayout, cell_owners, combine_region_noise, region_view, shape_regions
from ..params import EditParams
from ..ranking import combine_region_scores, rank

LMS_ORDER = 4  # LMSDiscreteScheduler.step's default order

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""predict_noise(latents, t) -> the guided model output for `latents` at timestep `t`."""


@dataclass
class BlendedLatentDiffusionPipelineOutput(BaseOutput):
    """images: PIL images, a float array (B, H, W, 3) in [0, 1], a tensor (B, 3, H, W) in [0, 1], or latents.

    With a scorer the images are sorted best first; `order` maps them back to the generated batch (and
    so to their generators)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None = None
    scores: list[float] | None = None  # CLIP text match inside the mask, best first, when ranked
    order: list[int] | None = None  # order[k]: index in the generated batch of images[k]
    crops: list[dict] | None = None  # each edited box {"box": [left, top, right, bottom], "size": [w, h]}
    region_scores: list[list[float]] | None = None  # with regions, when ranked: each result's score per region


@dataclass
class PreparedInputs:
    """The source image and mask at the size the model works at."""

    image: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    mask: torch.Tensor  # (1, 1, H, W) in {0, 1}, 1 = edit
    height: int
    width: int
    original_size: tuple[int, int]  # (height, width) of the input
    source: torch.Tensor  # (1, 3, h0, w0) in [-1, 1]: the input at its own size
    source_mask: torch.Tensor  # (1, 1, h0, w0) in {0, 1}: the edited region at the input's size
    strength: torch.Tensor | None = None  # soft masks: (1, 1, H, W) in [0, 1] at the work size (mask = > 0)
    source_strength: torch.Tensor | None = None  # soft masks: (1, 1, h0, w0) in [0, 1], the final alpha


@dataclass
class EditPlan:
    """What an edit works on: one piece per crop (the whole image is one piece covering it)."""

    pieces: list[PreparedInputs]
    crops: list[Crop]
    region: np.ndarray | None = None  # (H, W) bool, the edited region at the input's size, when cropped

    @property
    def cropped(self) -> bool:
        return self.region is not None


@dataclass
class EditPreview:
    """What an edit will change, known before the model runs."""

    crops: list[Crop]  # the boxes edited and the sizes the model works at
    area: np.ndarray  # (H, W) bool at the input's size: the latent cells the blending redraws
    native_size: int  # the model's native side, in pixels


@dataclass
class Finishing:
    """What happens after the loop: background reconstruction (PAPER.md section 2) and ranking (section 4)."""

    reconstruction: str = "none"
    feather: int = 0
    reconstruction_steps: int = 75
    reconstruction_crop: bool = False
    scorer: Any = None  # a bld.ranking.ClipScorer, or None for no ranking
    reconstruction_background_weight: float = 100.0
    paste_outside: bool = True  # after latent / decoder: the input's own pixels outside the mask
    regions: list[tuple[str, np.ndarray]] | None = None  # several regions: each one's prompt and pixels, to score

    @classmethod
    def from_params(cls, params: EditParams, scorer=None) -> Finishing:
        return cls(params.reconstruction, params.feather, params.reconstruction_steps, params.reconstruction_crop,
                   scorer, params.reconstruction_background_weight, params.paste_outside)


def image_size(image: Any) -> tuple[int, int]:
    """(height, width) of a PIL image, an (H, W[, C]) array or a ([B, ]C, H, W) tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3, 4):
            raise ValueError(f"an image array must have 2 to 4 dimensions, got shape {image.shape}")
        return (image.shape[0], image.shape[1]) if image.ndim < 4 else (image.shape[1], image.shape[2])
    if isinstance(image, torch.Tensor):
        if image.ndim not in (2, 3, 4):
            raise ValueError(f"an image tensor must have 2 to 4 dimensions, got shape {tuple(image.shape)}")
        return image.shape[-2], image.shape[-1]
    raise ValueError(f"image and mask must be PIL images, NumPy arrays or torch tensors, got {type(image).__name__}")


def to_unit_range(image: Any) -> Any:
    """Integer arrays and tensors (uint8, uint16) -> float32 in [0, 1]; anything else unchanged."""
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.iinfo(image.dtype).max
    if isinstance(image, np.ndarray) and image.dtype == bool:
        return image.astype(np.float32)
    if isinstance(image, torch.Tensor) and not torch.is_floating_point(image):
        scale = 1.0 if image.dtype == torch.bool else float(torch.iinfo(image.dtype).max)
        return image.float() / scale
    return image


def check_mask_aspect(mask_size: tuple[int, int], size: tuple[int, int]) -> None:
    """A mask of another size than the image's must have its aspect ratio (within 1%); sizes are (h, w)."""
    (hm, wm), (h0, w0) = mask_size, size
    if (hm, wm) != (h0, w0) and abs(hm / wm - h0 / w0) > 0.01 * (h0 / w0):
        raise ValueError(f"mask is {wm}x{hm} but image is {w0}x{h0}: they must have the same aspect ratio")


def crop_input(image: Any, box: tuple[int, int, int, int]) -> Any:
    """The (left, top, right, bottom) box of a PIL image, an (H, W[, C]) or (B, H, W, C) array, or a
    ([B, ]C, H, W) tensor, in the same kind."""
    left, top, right, bottom = box
    if isinstance(image, PIL.Image.Image):
        return image.crop(box)
    if isinstance(image, np.ndarray):
        return image[top:bottom, left:right] if image.ndim < 4 else image[:, top:bottom, left:right]
    return image[..., top:bottom, left:right]


def snap(size: int, multiple: int) -> int:
    """Round `size` to the nearest positive multiple of `multiple`."""
    return max(multiple, int(round(size / multiple)) * multiple)


def _plms_from(scheduler: PNDMScheduler, skipped: int) -> torch.Tensor:
    """PNDM's timesteps entered after `skipped` steps. Its pseudo-linear multistep warms up by visiting its
    second timestep twice ([t0, t1, t1, t2, ...]), counting calls rather than reading timesteps, so a plain
    slice would be one step out from the third call on: keep the doubled visit at the new start."""
    if not scheduler.config.skip_prk_steps:
        raise ValueError("PNDM with Runge-Kutta warm-up steps (skip_prk_steps=False) cannot start part-way "
                         "through its schedule: use skip_fraction=0, skip_prk_steps=True or another scheduler")
    steps = torch.unique_consecutive(scheduler.timesteps)[skipped:]
    return torch.cat([steps[:2], steps[1:]]) if len(steps) > 1 else steps


EDIT_ARGUMENTS = ("num_inference_steps", "guidance_scale", "skip_fraction", "invert_mask", "height", "width",
                  "crop", "crop_padding", "soft_mask", "mask_grow", "mask_blur", "latent_mask_mode",
                  "mask_dilation_iterations", "background_noise", "reconstruction", "feather", "reconstruction_steps",
                  "reconstruction_background_weight", "reconstruction_crop", "paste_outside", "guidance_cutoff",
                  "regions")  # the __call__ arguments every family shares that are EditParams fields by the same name


def call_settings(arguments: dict[str, Any]) -> dict[str, Any]:
    """The EditParams fields among a pipeline call's arguments (its `locals()` on entry): the shared ones by
    their own names, and num_images_per_prompt as num_images."""
    return {"num_images": arguments["num_images_per_prompt"], **{name: arguments[name] for name in EDIT_ARGUMENTS}}


def callback_tensor_inputs(callback, names: list[str] | None) -> list[str]:
    """The tensors a step-end callback asks for: a diffusers PipelineCallback's own `tensor_inputs`, else
    `names`, else just the latents."""
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        return list(callback.tensor_inputs)
    return list(names) if names is not None else ["latents"]


def _rows(tensor: torch.Tensor, batch: int, guided: bool) -> torch.Tensor:
    """A conditioning tensor for a UNet pass over `batch` latents (twice that when guided): unguided, the
    conditional half of negative-and-conditional rows, or one row repeated."""
    if guided:
        return tensor
    if tensor.shape[0] == 2 * batch:
        return tensor[batch:]
    if tensor.shape[0] == 1 and batch > 1:
        return tensor.expand(batch, *tensor.shape[1:])
    return tensor


def region_major(rows: list[tuple[torch.Tensor | None, torch.Tensor]], guided: bool) -> torch.Tensor:
    """One conditioning tensor from each region's (negative, conditional) rows, the main prompt's first: every
    region's negative rows in turn, then every region's conditional rows (guided), or these alone."""
    conditional = [cond for _, cond in rows]
    return torch.cat([negative for negative, _ in rows] + conditional) if guided else torch.cat(conditional)


def _step_kwargs(scheduler, index: int) -> dict:
    """LMS takes its multistep order from its absolute step index, so entered part-way through its schedule
    it would weigh history it does not have: give it the order (at most its default 4) that `index` steps
    of history allow."""
    is_lms = any(cls.__name__ == "LMSDiscreteScheduler" for cls in type(scheduler).__mro__)  # importing it costs 1 s
    return {"order": min(index + 1, LMS_ORDER)} if is_lms else {}


class BlendedLatentMixin:
    """Blended Latent Diffusion steps shared by every family's pipeline (PAPER.md section 1)."""

    default_guidance_scale: float = 7.5
    min_side: int = 4  # in latent cells

    @property
    def mask_processor(self) -> VaeImageProcessor:
        return VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False,
                                 do_binarize=True, do_convert_grayscale=True)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network the loop calls at every step: the UNet here, the transformer for SD3 and FLUX."""
        return self.unet

    @property
    def size_multiple(self) -> int:
        """Sides the model works at are multiples of this, in pixels: the VAE factor (times the
        transformer's patch size for SD3 and FLUX)."""
        return self.vae_scale_factor

    def noised_source(self, z0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                      index: int) -> torch.Tensor:
        """The source latent noised to the level of timesteps[index]: sqrt(a) z0 + sqrt(1 - a) eps."""
        return self.scheduler.add_noise(z0, noise, timesteps[index:index + 1])

    def scale_model_input(self, model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The sampler's input scaling (Euler's 1 / sqrt(sigma^2 + 1); none for DDIM)."""
        return self.scheduler.scale_model_input(model_input, t)

    @property
    def native_size(self) -> int:
        """The side the model was trained at: UNet sample size x VAE factor (512 for SD 1.5, 1024 for SDXL)."""
        sample = self.unet.config.sample_size
        return int(max(sample) if isinstance(sample, (list, tuple)) else sample) * self.vae_scale_factor

    @property
    def bucket_step(self) -> int:
        """Crop sizes are multiples of this: the UNet's overall downsampling in pixels, and at least 1/16 of
        the native side (64 px for SD 1.5 and SDXL)."""
        unet_factor = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        return max(unet_factor, self.native_size // 16 // unet_factor * unet_factor)

    @staticmethod
    def at_own_size(image, *, mask: bool = False, binarize: bool = True) -> torch.Tensor:
        """An image in [-1, 1], or a mask in {0, 1} (in [0, 1] when not `binarize`), as a tensor at its own
        size (no snapping)."""
        processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=not mask, do_binarize=mask and binarize,
                                      do_convert_grayscale=mask)
        return processor.preprocess(image).to(torch.float32)

    def resolve_settings(self, prompt, prompt_embeds=None, **settings) -> tuple[EditParams, float, int]:
        """Validate the call's settings against EditParams; return them with the guidance scale and batch size."""
        params = EditParams(prompt=prompt if isinstance(prompt, str) else "", **settings)
        guidance = self.default_guidance_scale if params.guidance_scale is None else params.guidance_scale
        if isinstance(prompt, list):
            prompts = len(prompt)
        elif prompt is None and isinstance(prompt_embeds, torch.Tensor):
            prompts = prompt_embeds.shape[0]
        else:
            prompts = 1
        return params, guidance, prompts * params.num_images

    @staticmethod
    def region_prompts(negative_prompt, params: EditParams) -> list[tuple[str, Any]]:
        """Each extra region's prompt and negative prompt (its own, or the edit's)."""
        return [(region.prompt, negative_prompt if region.negative_prompt is None else region.negative_prompt)
                for region in params.regions]

    def check_edit_inputs(self, prompt, image, mask_image, params: EditParams, generator, batch_size,
                          output_type: str, scorer, prompt_embeds=None, negative_prompt_embeds=None,
                          callback_on_step_end_tensor_inputs=("latents",)) -> None:
        """Validate once, at the top; every error names the bad value and what would be valid."""
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass prompt (a string or a list of strings) or prompt_embeds")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass prompt or prompt_embeds, not both")
        if prompt is not None and (not isinstance(prompt, (str, list)) or isinstance(prompt, list) and (
                not prompt or not all(isinstance(p, str) for p in prompt))):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        if prompt_embeds is not None and negative_prompt_embeds is not None and (
                prompt_embeds.shape != negative_prompt_embeds.shape):
            raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                             f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
        if image is None or mask_image is None:
            raise ValueError("both image and mask_image are required")
        for name in ("height", "width"):
            value = getattr(params, name)
            if value is not None and value % self.size_multiple:
                raise ValueError(f"{name}={value} must be a multiple of {self.size_multiple} for this model")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} results: pass one generator "
                             f"or one per result (num_images_per_prompt={params.num_images})")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type={output_type!r} is not one of pil, np, pt, latent")
        if scorer is not None and output_type == "latent":
            raise ValueError("ranking needs decoded images: use an output_type other than 'latent' or no scorer")
        if scorer is not None and (prompt is None or isinstance(prompt, list) and len(prompt) > 1):
            raise ValueError("ranking scores the results against one prompt's text: pass a single prompt "
                             "(not only prompt_embeds) or no scorer")
        if params.regions and batch_size != params.num_images:
            raise ValueError("an edit with regions takes one main prompt (the first region's), not a list")
        allowed = [*self._callback_tensor_inputs, "mask"]
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in allowed]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not among {allowed}")

    def shaped_mask(self, image, mask_image, params: EditParams):
        """(mask, params, soft): the mask after params.mask_grow, mask_blur and soft_mask (bld.ops.masks), as a
        grayscale PIL mask at the image's size, already inverted, with params.invert_mask then off. Unshaped
        (no grow or blur, and no gray levels read as strengths), the mask and params come back as given, so
        a binary mask edits the same with soft_mask on or off."""
        if not needs_shaping(params.soft_mask, params.mask_grow, params.mask_blur):
            return mask_image, params, False
        h0, w0 = image_size(to_unit_range(image))
        check_mask_aspect(image_size(to_unit_range(mask_image)), (h0, w0))
        shaped = shape_mask(to_unit_range(mask_image), (w0, h0), invert=params.invert_mask,
                            soft_mask=params.soft_mask, grow=params.mask_grow, blur=params.mask_blur)
        if not shaped.soft and not params.mask_grow and not params.mask_blur:
            return mask_image, params, False
        gray = PIL.Image.fromarray(np.round(shaped.strength * 255).astype(np.uint8))
        return gray, dataclasses.replace(params, invert_mask=False), shaped.soft

    def edit_masks(self, image, mask_image, params: EditParams, region_masks=()):
        """(mask, params, soft, layout): the mask the edit blends, crops and pastes by, and with params.regions
        the regions' layout (bld.ops.regions), the mask then being their union; without, shaped_mask's and None."""
        if not params.regions and not len(region_masks):
            return (*self.shaped_mask(image, mask_image, params), None)
        layout = self.region_layout(image, mask_image, region_masks, params)
        union = PIL.Image.fromarray(np.round(layout.alpha * 255).astype(np.uint8))
        return union, params, layout.soft, layout

    def region_layout(self, image, mask_image, region_masks, params: EditParams) -> RegionLayout:
        """Every region's mask (the main one first) shaped as a single mask is (grow, blur, soft_mask;
        bld.ops.masks) at the image's size, and laid out with their strengths (the main region's is 1)."""
        if len(region_masks) != len(params.regions):
            raise ValueError(f"got {len(region_masks)} region masks for {len(params.regions)} regions: pass one "
                             f"mask per region (region_masks), in the order of params.regions")
        if params.invert_mask:
            raise ValueError("invert_mask does not apply to several regions: paint each region to change")
        h0, w0 = image_size(to_unit_range(image))
        masks = [to_unit_range(mask) for mask in [mask_image, *region_masks]]
        for number, mask in enumerate(masks, start=1):
            if mask is None:
                raise ValueError(f"region {number}'s mask is missing")
            try:
                check_mask_aspect(image_size(mask), (h0, w0))
            except ValueError as exc:
                raise ValueError(f"region {number}: {exc}") from None
        return shape_regions(masks, (w0, h0), [1.0] + [region.strength for region in params.regions],
                             soft_mask=params.soft_mask, grow=params.mask_grow, blur=params.mask_blur)

    def prepare_edit(self, image, mask_image, params: EditParams, soft: bool = False) -> EditPlan:
        """The pieces an edit works on. crop 'off': the whole image, at its own size snapped to the VAE factor
        or at params.height x width. crop 'auto': the crops of bld.ops.cropping.plan_crops at native-size
        buckets (params.height / width, when given, replace the bucket's); a single crop covering the whole
        image is prepared as crop 'off' prepares it, at the bucket's size."""
        if params.crop == "off":
            prepared = self.prepare_image_and_mask(image, mask_image, params.height, params.width, params.invert_mask,
                                                   soft=soft)
            return EditPlan([prepared], [Crop((0, 0, *prepared.original_size[::-1]), prepared.width,
                                              prepared.height)])
        image, mask_image = to_unit_range(image), to_unit_range(mask_image)
        h0, w0 = image_size(image)
        if min(h0, w0) < self.min_side * self.vae_scale_factor:
            raise ValueError(f"image is {w0}x{h0}: each side must be at least {self.min_side * self.vae_scale_factor} "
                             f"pixels for this model")
        check_mask_aspect(image_size(mask_image), (h0, w0))
        region = self.edit_region(mask_image, (h0, w0), params.invert_mask, soft)
        sizes = [(params.width, params.height)] if params.width and params.height else None
        crops = plan_crops(region, self.native_size, self.bucket_step, params.crop_padding,
                           sizes or buckets(self.native_size, self.bucket_step))
        if (params.width is None) != (params.height is None):  # one side given: the other follows the box
            crops = [Crop(c.box, params.width or snap(round(params.height * c.box_size[0] / c.box_size[1]),
                                                      self.size_multiple),
                          params.height or snap(round(params.width * c.box_size[1] / c.box_size[0]),
                                                self.size_multiple)) for c in crops]
        if len(crops) == 1 and crops[0].covers(w0, h0):
            return EditPlan([self.prepare_image_and_mask(image, mask_image, crops[0].height, crops[0].width,
                                                         params.invert_mask, soft=soft)], crops)
        pieces = []
        for crop in crops:
            left, top, right, bottom = crop.box
            crop_mask = (crop_input(mask_image, crop.box) if soft else
                         torch.from_numpy(region[top:bottom, left:right]).to(torch.float32)[None, None])
            pieces.append(self.prepare_image_and_mask(crop_input(image, crop.box), crop_mask, crop.height,
                                                      crop.width, invert_mask=False, whole=False, soft=soft))
        return EditPlan(pieces, crops, region)

    def edit_preview(self, image, mask_image, params: EditParams, region_masks=()) -> EditPreview:
        """The crops and the area the loop redraws (each piece's latent mask, back at the input's size),
        without encoding or denoising anything. The area is the mask made of whole latent cells (by
        params.latent_mask_mode): where it cuts through an object, the result is cut there too. With a soft
        mask it is every cell that joins at some step; with regions, their union."""
        mask_image, params, soft, _ = self.edit_masks(image, mask_image, params, region_masks)
        plan = self.prepare_edit(image, mask_image, params, soft)
        height, width = plan.pieces[0].original_size if not plan.cropped else plan.region.shape
        area = np.zeros((height, width), bool)
        factor = self.vae_scale_factor
        for prepared, crop in zip(plan.pieces, plan.crops):
            cells = latent_mask(prepared.mask, (prepared.height // factor, prepared.width // factor),
                                params.latent_mask_mode)
            left, top, right, bottom = crop.box
            shown = F.interpolate(cells.float(), size=(bottom - top, right - left), mode="nearest")
            area[top:bottom, left:right] |= shown[0, 0].cpu().numpy() > 0.5
        return EditPreview(plan.crops, area, self.native_size)

    def edit_region(self, mask_image, size: tuple[int, int], invert: bool, soft: bool = False) -> np.ndarray:
        """The edited region as a bool (H, W) array at the image's `size` (height, width): the mask
        thresholded at 0.5 (as prepare_image_and_mask does), resized by nearest neighbour if its size
        differs, inverted if asked; refused when it is empty or everything. soft: the region is every pixel
        of strength above 0 (a shaped soft mask, see bld.ops.masks)."""
        if soft:
            region = self.at_own_size(mask_image, mask=True, binarize=False)[0, 0].cpu().numpy() > 0
        elif isinstance(mask_image, PIL.Image.Image):
            region = np.asarray(mask_image.convert("L")) >= 128
        else:
            region = binarize_mask(self.at_own_size(mask_image, mask=True))[0, 0].cpu().numpy() > 0
        if region.shape != size:
            region = np.asarray(PIL.Image.fromarray(region).resize(size[::-1], PIL.Image.NEAREST))
        region = ~region if invert else region
        inverted = " (the mask was inverted)" if invert else ""
        if not region.any():
            raise ValueError(f"mask is empty: nothing to edit; paint the region to change in white{inverted}")
        if region.all():
            raise ValueError(f"mask covers the whole image: nothing would be kept; paint only the region to "
                             f"change{inverted}")
        return region

    def prepare_image_and_mask(self, image, mask_image, height: int | None, width: int | None,
                               invert_mask: bool, *, whole: bool = True, soft: bool = False) -> PreparedInputs:
        """Resize to a size the model accepts, normalize the image to [-1, 1], threshold the mask at 0.5
        (soft: keep its strengths, the mask being where they are above 0)."""
        image, mask_image = to_unit_range(image), to_unit_range(mask_image)
        h0, w0 = image_size(image)
        check_mask_aspect(image_size(mask_image), (h0, w0))
        factor = self.size_multiple
        if height is None and width is not None:
            height = snap(round(h0 * width / w0), factor)
        if width is None and height is not None:
            width = snap(round(w0 * height / h0), factor)
        height = height or snap(h0, factor)
        width = width or snap(w0, factor)
        smallest = self.min_side * self.vae_scale_factor
        if min(height, width) < smallest:
            raise ValueError(f"image is {w0}x{h0}: each side must be at least {smallest} pixels for this model")
        pixels = self.image_processor.preprocess(image, height=height, width=width).to(torch.float32)
        if pixels.shape[0] != 1 or pixels.shape[1] != 3:
            raise ValueError(f"expected one RGB image, got a batch of shape {tuple(pixels.shape)}")
        strength = source_strength = None
        if soft:
            gray = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=False,
                                     do_convert_grayscale=True)
            strength = gray.preprocess(mask_image, height=height, width=width)
            strength = strength.to(torch.float32).clamp(0, 1)
            mask = (strength > 0).float()
        else:
            mask = binarize_mask(self.mask_processor.preprocess(mask_image, height=height, width=width))
        if mask.shape[0] != 1:
            raise ValueError(f"expected one mask, got a batch of shape {tuple(mask.shape)}")
        source = self.at_own_size(image)
        if soft:
            source_strength = self.at_own_size(mask_image, mask=True, binarize=False).clamp(0, 1)
            if source_strength.shape[-2:] != source.shape[-2:]:
                source_strength = F.interpolate(source_strength, size=source.shape[-2:], mode="bilinear")
            source_mask = (source_strength > 0).float()
        else:
            source_mask = binarize_mask(self.at_own_size(mask_image, mask=True))
        if source_mask.shape[-2:] != source.shape[-2:]:
            source_mask = F.interpolate(source_mask, size=source.shape[-2:], mode="nearest")
        if invert_mask:
            mask, source_mask = 1 - mask, 1 - source_mask
        if not mask.any():
            raise ValueError("mask is empty: nothing to edit; paint the region to change in white"
                             + (" (the mask was inverted)" if invert_mask else ""))
        if whole and mask.all():  # a crop may lie wholly inside the mask
            raise ValueError("mask covers the whole image: nothing would be kept; paint only the region to change"
                             + (" (the mask was inverted)" if invert_mask else ""))
        return PreparedInputs(pixels, mask, height, width, (h0, w0), source, source_mask, strength, source_strength)

    @contextmanager
    def vae_precision(self):
        """Run the VAE in float32 when it is float16 and its config asks for upcasting (SDXL's VAE)."""
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)
            try:
                yield torch.float32
            finally:
                self.vae.to(torch.float16)
        else:
            yield self.vae.dtype

    @torch.no_grad()
    def encode_source(self, pixels: torch.Tensor) -> torch.Tensor:
        """z0 = E(x) * scaling_factor, with the posterior mean so that z0 is deterministic."""
        with self.vae_precision() as dtype:
            z0 = self.vae.encode(pixels.to(device=self.vae.device, dtype=dtype)).latent_dist.mode()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z0 - shift) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z / scaling_factor), in [-1, 1] (not clamped)."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents / self.vae.config.scaling_factor + shift
        with self.vae_precision() as dtype:
            return self.vae.decode(latents.to(dtype), return_dict=False)[0]

    def source_latent_and_mask(self, prepared: PreparedInputs, batch_size: int, mode: str, device, dtype):
        """z0 repeated over the batch, (B, C, h, w), and the latent mask, (B, 1, h, w) in {0, 1}."""
        z0 = self.encode_source(prepared.image).to(device=device, dtype=dtype)
        mask = latent_mask(prepared.mask, tuple(z0.shape[-2:]), mode)
        if not mask.any():
            raise ValueError(f"the mask vanishes at the latent resolution with latent_mask_mode={mode!r} "
                             f"(it is thinner than {self.vae_scale_factor} pixels); use latent_mask_mode='any'")
        mask = mask.to(device=device, dtype=dtype)
        return z0.expand(batch_size, -1, -1, -1), mask.expand(batch_size, -1, -1, -1)

    def guided_noise_predictor(self, conditioning: dict[str, torch.Tensor], unet_call, guidance_scale: float,
                               guidance_rescale: float = 0.0) -> NoisePredictor:
        """predict_noise for the loop: classifier-free guidance over `unet_call(model_input, t, conditioning)`.

        `conditioning` holds the UNet's conditioning tensors (prompt_embeds, and SDXL's add_text_embeds and
        add_time_ids), negative rows first when guided; it is read at every step, so a step-end callback
        may replace its tensors. Guidance follows `self._guidance_scale`, which such a callback may set to 0
        (diffusers' SDCFGCutoffCallback): from then on only the conditional rows are used, one UNet pass per
        result instead of two. guidance_rescale: diffusers' rescale of the guided prediction (0 = off).
        """
        self._guidance_scale = guidance_scale

        def predict_noise(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            batch = latents.shape[0]
            guided = self._guidance_scale > 1.0
            cond = {name: _rows(value, batch, guided) for name, value in conditioning.items()}
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = self.scale_model_input(model_input, t)
            noise_pred = unet_call(model_input, t, cond)
            if guided:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + self._guidance_scale * (text - uncond)
                if guidance_rescale > 0:
                    noise_pred = rescale_noise_cfg(noise_pred, text, guidance_rescale=guidance_rescale)
            return noise_pred

        return predict_noise

    def regional_noise_predictor(self, predict_noise: NoisePredictor, layout: RegionLayout, crop: Crop,
                                 latent_size: tuple[int, int], device, dtype) -> NoisePredictor:
        """predict_noise over every region's conditioning rows in one UNet call (region-major rows, as the
        family stacks them), each latent cell of the piece keeping its own region's prediction."""
        left, top, right, bottom = crop.box
        owners = cell_owners(layout.owner[top:bottom, left:right], layout.count, latent_size)
        owners = owners.to(device=device, dtype=dtype)

        def predict(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return combine_region_noise(predict_noise(latents.repeat(layout.count, 1, 1, 1), t), owners)

        return predict

    def schedule_strength(self, prepared: PreparedInputs, crop: Crop,
                          layout: RegionLayout | None) -> torch.Tensor | None:
        """The strength (1, 1, H, W) at the piece's work size that says when each pixel joins the edit: a soft
        mask's, or with regions of strength below 1 their schedule (bld.ops.regions); None: every step edits
        the whole mask."""
        if layout is None or not layout.timed:
            return prepared.strength
        left, top, right, bottom = crop.box
        piece = torch.from_numpy(np.ascontiguousarray(layout.schedule[top:bottom, left:right]))[None, None]
        return F.interpolate(piece, size=(prepared.height, prepared.width),
                             mode="bilinear" if layout.soft else "nearest")

    def blended_timesteps(self, num_inference_steps: int, skip_fraction: float, device,
                          latent_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The schedule's timesteps after skipping the first `skip_fraction` of it. latent_size (h, w): the
        piece's latent size, for the schedules that shift with it (FLUX.1's)."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        skipped = num_skipped_steps(num_inference_steps, skip_fraction)
        timesteps = self.scheduler.timesteps
        if isinstance(self.scheduler, PNDMScheduler) and skipped:
            return _plms_from(self.scheduler, skipped)
        start = skipped * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return timesteps[start:]

    def blended_denoise(self, z0: torch.Tensor, mask: torch.Tensor, timesteps: torch.Tensor,
                        predict_noise: NoisePredictor, generator, fresh_noise: bool,
                        mask_dilation_iterations: int = 0, callback_on_step_end=None, *, eta: float = 0.0,
                        callback_tensors: dict[str, torch.Tensor] | None = None,
                        callback_tensor_inputs=("latents",), guidance_cutoff: float = 1.0,
                        step_masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The blended sampling loop (PAPER.md section 1).

        Starts from the source noised to the first kept timestep; after each scheduler step keeps the
        denoised latent inside the mask and the source noised to the next timestep outside it; the
        last step blends with the clean source, so outside the mask the result is z0 exactly.
        With mask_dilation_iterations N > 0 the mask shrinks progressively from its largest dilation to
        itself in N + 1 equal phases (section 3).
        z0: (B, C, h, w) source latents; mask: (B, 1, h, w) in {0, 1}. eta: DDIM's noise (0 = deterministic).
        guidance_cutoff: guidance stops (self._guidance_scale = 0) after this share of the steps.
        step_masks: a soft mask's latent mask for each step (bld.ops.masks.soft_latent_masks), in place of
        `mask`; progressive shrinking then dilates each step's mask by its phase's kernel.
        callback_on_step_end(pipe, i, t, state) sees the blended `latents`, the step's `mask` and the
        `callback_tensor_inputs` named in `callback_tensors`; what it returns replaces them (a new
        `latents`, or conditioning tensors that predict_noise reads from `callback_tensors`).
        """
        def draw_noise() -> torch.Tensor:
            return randn_tensor(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)

        callback_tensors = {} if callback_tensors is None else callback_tensors
        masks = shrinking_masks(mask, mask_dilation_iterations)
        noise = draw_noise()
        latents = self.noised_source(z0, noise, timesteps, 0)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        self._interrupt = False
        self._num_timesteps = len(timesteps)
        guided_steps = math.ceil(guidance_cutoff * len(timesteps))
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if i == guided_steps:
                    self._guidance_scale = 0.0
                noise_pred = predict_noise(latents, t)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs,
                                              **_step_kwargs(self.scheduler, i), return_dict=False)[0]
                if i == len(timesteps) - 1:
                    background = z0
                else:
                    if fresh_noise:
                        noise = draw_noise()
                    background = self.noised_source(z0, noise, timesteps, i + 1)
                phase = phase_of_step(i, len(timesteps), len(masks))
                if step_masks is None:
                    step_mask = masks[phase]
                else:
                    step_mask = shrinking_masks(step_masks[i], mask_dilation_iterations)[phase]
                latents = blend(latents, background, step_mask)
                if callback_on_step_end is not None:
                    extra = {k: callback_tensors[k] for k in callback_tensor_inputs if k in callback_tensors}
                    out = callback_on_step_end(self, i, t, {"latents": latents, "mask": step_mask, **extra}) or {}
                    latents = out.get("latents", latents)
                    callback_tensors.update({k: v for k, v in out.items() if k in callback_tensors})
                progress_bar.update()
                if self._interrupt:
                    break
        return latents

    def interrupt_edit(self) -> None:
        """Ask a running edit to stop after its current step (used by the web app to cancel)."""
        self._interrupt = True

    def run_blended_edit(self, image, mask_image, params: EditParams, *, conditioning_for, unet_call,
                         guidance_scale: float, guidance_rescale: float, generator, batch_size: int, dtype,
                         output_type: str, prompt, scorer, callback_on_step_end=None, tensor_inputs=("latents",),
                         eta: float = 0.0, region_masks=()) -> BlendedLatentDiffusionPipelineOutput:
        """Steps 3 to 7 of an edit, once per piece (crop) of the image, then the stitched, ranked results.

        conditioning_for(prepared) -> the UNet's conditioning tensors for one piece (negative rows first when
        guided); unet_call(model_input, t, conditioning) -> the model output. Each piece draws its noise
        from the same generators in turn, so a result does not depend on the batch it was made in.
        With params.regions (their masks in `region_masks`) the conditioning holds every region's rows,
        region-major within the negative and the conditional halves: the main prompt's, then each region's."""
        device = self._execution_device
        mask_image, params, soft, layout = self.edit_masks(image, mask_image, params, region_masks)
        plan = self.prepare_edit(image, mask_image, params, soft)  # 3. source image and mask: the whole or crops
        if output_type == "latent" and len(plan.pieces) > 1:
            raise ValueError(f"output_type='latent' returns one piece's latents, but this edit has "
                             f"{len(plan.pieces)} crops: pass crop='off' or another output type")
        finished = []
        for prepared, crop in zip(plan.pieces, plan.crops):
            # 4. Source latent z0 = E(x) and the latent mask at the latent resolution
            z0, mask = self.source_latent_and_mask(prepared, batch_size, params.latent_mask_mode, device, dtype)
            # 5. The schedule after skipping its first skip_fraction
            timesteps = self.blended_timesteps(params.num_inference_steps, params.skip_fraction, device,
                                               latent_size=tuple(z0.shape[-2:]))
            step_masks = None
            strength = self.schedule_strength(prepared, crop, layout)
            if strength is not None:  # a soft mask or a weaker region: each step edits the pixels strong enough for it
                step_masks = [m.to(device=device, dtype=dtype).expand(batch_size, -1, -1, -1) for m in
                              soft_latent_masks(strength, tuple(z0.shape[-2:]), params.latent_mask_mode,
                                                len(timesteps))]
            # 6. Denoise, blending with the noised source after every step
            conditioning = conditioning_for(prepared)
            predict_noise = self.guided_noise_predictor(conditioning, unet_call, guidance_scale, guidance_rescale)
            if layout is not None:  # several regions: each latent cell follows its own region's prompt
                predict_noise = self.regional_noise_predictor(predict_noise, layout, crop, tuple(z0.shape[-2:]),
                                                              device, dtype)
            latents = self.blended_denoise(z0, mask, timesteps, predict_noise, generator,
                                           fresh_noise=params.background_noise == "fresh",
                                           mask_dilation_iterations=params.mask_dilation_iterations,
                                           callback_on_step_end=callback_on_step_end, eta=eta,
                                           callback_tensors=conditioning, callback_tensor_inputs=tensor_inputs,
                                           guidance_cutoff=params.guidance_cutoff, step_masks=step_masks)
            finished.append(latents)
            if self._interrupt:
                break
        # 7. Decode, reconstruct the background, restore the input's size (stitch the crops), rank
        finishing = Finishing.from_params(params, scorer)
        if layout is not None:  # each region is scored against its own prompt
            prompts = [prompt if isinstance(prompt, str) else "", *(region.prompt for region in params.regions)]
            finishing.regions = [(text, layout.region(index)) for index, text in enumerate(prompts)]
        if not plan.cropped:
            output = self.finish(finished[0], plan.pieces[0], output_type, prompt, finishing, dtype)
        else:
            output = self.finish_crops(finished, plan, image, output_type, prompt, finishing, dtype)
        output.crops = [crop.to_dict() for crop in plan.crops]
        return output

    def decode_and_reconstruct(self, latents: torch.Tensor, prepared: PreparedInputs, finishing: Finishing,
                               prompt_dtype) -> tuple[torch.Tensor, list[bool] | None]:
        """Pixels (B, 3, h0, w0) in [-1, 1] at the piece's own size, background reconstructed, and the safety
        checker's flags (None without one)."""
        pixels = self.decode_latents(latents)
        has_nsfw = None
        if getattr(self, "safety_checker", None) is not None:
            pixels, has_nsfw = self.run_safety_checker(pixels, pixels.device, prompt_dtype)
        method = finishing.reconstruction
        if method in ("latent", "decoder"):  # at the size the model works at: they use the VAE and the latents
            pixels = reconstruct_background(method, prepared.image, pixels, prepared.mask, vae=self.vae,
                                            latents=latents, steps=finishing.reconstruction_steps,
                                            background_weight=finishing.reconstruction_background_weight,
                                            crop=finishing.reconstruction_crop, progress=not self._progress_off())
        if prepared.original_size != (prepared.height, prepared.width):
            pixels = F.interpolate(pixels.float(), size=prepared.original_size, mode="bicubic",
                                   antialias=True, align_corners=False)
        paste = method in ("pixel", "poisson") or method in ("latent", "decoder") and finishing.paste_outside
        if paste and prepared.source_strength is not None:  # a soft mask is its own alpha (no feather)
            source, alpha = prepared.source.to(pixels.device), prepared.source_strength.to(pixels.device)
            if method == "poisson":
                region = prepared.source_mask.to(pixels.device)
                pixels = reconstruct_background("poisson", source, pixels.float(), region)
            pixels = pixel_blend(source, pixels.float(), alpha)
        elif paste:  # at the input's own size, so the kept pixels are the input's
            pixels = reconstruct_background("pixel" if method != "poisson" else method,
                                            prepared.source.to(pixels.device), pixels.float(),
                                            prepared.source_mask.to(pixels.device), feather=finishing.feather)
        return pixels, has_nsfw

    def finish(self, latents: torch.Tensor, prepared: PreparedInputs, output_type: str, prompt: str | list[str],
               finishing: Finishing, prompt_dtype) -> BlendedLatentDiffusionPipelineOutput:
        """Decode, reconstruct the background, restore the input's size, convert, rank (the whole image)."""
        if output_type == "latent":
            return BlendedLatentDiffusionPipelineOutput(images=latents)
        pixels, has_nsfw = self.decode_and_reconstruct(latents, prepared, finishing, prompt_dtype)
        do_denormalize = [True] * pixels.shape[0] if has_nsfw is None else [not n for n in has_nsfw]
        images = self.image_processor.postprocess(pixels, output_type=output_type, do_denormalize=do_denormalize)
        return self.ranked(images, has_nsfw, prompt, prepared.source_mask[0, 0].cpu().numpy(), finishing, output_type)

    def finish_crops(self, latents: list[torch.Tensor], plan: EditPlan, image, output_type: str,
                     prompt: str | list[str], finishing: Finishing,
                     prompt_dtype) -> BlendedLatentDiffusionPipelineOutput:
        """Each crop decoded and reconstructed at its box's size, pasted into the input at full resolution:
        outside the crops every pixel is the input's, never re-encoded."""
        results, has_nsfw = None, None
        for piece_latents, prepared, crop in zip(latents, plan.pieces, plan.crops):
            pixels, flags = self.decode_and_reconstruct(piece_latents, prepared, finishing, prompt_dtype)
            do_denormalize = [True] * pixels.shape[0] if flags is None else [not n for n in flags]
            piece = self.image_processor.postprocess(pixels, output_type=output_type, do_denormalize=do_denormalize)
            if results is None:
                results = self.full_size_copies(image, output_type, pixels.shape[0])
            left, top, right, bottom = crop.box
            if output_type == "pil":
                for result, part in zip(results, piece):
                    result.paste(part, (left, top))
            elif output_type == "np":
                results[:, top:bottom, left:right] = piece
            else:
                results[:, :, top:bottom, left:right] = piece.to(results.device, results.dtype)
            if flags is not None:
                has_nsfw = [a or b for a, b in zip(has_nsfw or [False] * len(flags), flags)]
        boxes = [crop.box for crop in plan.crops]
        view = bounding_box(boxes)  # CLIP sees the edit at the scale it was drawn
        return self.ranked(results, has_nsfw, prompt, plan.region, finishing, output_type, view, boxes)

    def full_size_copies(self, image, output_type: str, count: int):
        """`count` copies of the input at its own size in the output type (PIL RGB, (B, H, W, 3) float array in
        [0, 1], or (B, 3, H, W) tensor): the canvases the crops are pasted into, equal to the input's values."""
        if isinstance(image, PIL.Image.Image):
            base = image.convert("RGB")
            if output_type == "pil":
                return [base.copy() for _ in range(count)]
            base = np.asarray(base, dtype=np.float32) / 255.0
        else:
            base = to_unit_range(image)
            if isinstance(base, torch.Tensor):
                base = base.float().cpu().numpy()
                base = base[0] if base.ndim == 4 else base
                base = np.moveaxis(base, 0, -1) if base.ndim == 3 and base.shape[0] in (1, 3) else base
            base = np.asarray(base, dtype=np.float32)
            base = base[0] if base.ndim == 4 else base
            base = np.repeat(base[..., None], 3, axis=-1) if base.ndim == 2 else base
            base = np.repeat(base, 3, axis=-1) if base.shape[-1] == 1 else base
            if output_type == "pil":
                return [PIL.Image.fromarray(np.round(np.clip(base, 0, 1) * 255).astype(np.uint8))
                        for _ in range(count)]
        if output_type == "np":
            return np.repeat(base[None], count, axis=0)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(base, -1, 0)))[None].repeat(count, 1, 1, 1)

    def ranked(self, images, has_nsfw, prompt, region: np.ndarray, finishing: Finishing,
               output_type: str, view=None, boxes=None) -> BlendedLatentDiffusionPipelineOutput:
        """The output, sorted best first by the scorer's text match inside `region` when there is a scorer
        (seen through the square around `view`, the crops' box, when the crops are not the whole image).
        With regions, each region's prompt is matched inside its own pixels (seen through the crops, of
        `boxes`, that hold it) and a result's score is the worst of them (bld.ranking.combine_region_scores)."""
        if finishing.scorer is None:
            return BlendedLatentDiffusionPipelineOutput(images=images, nsfw_content_detected=has_nsfw)
        prompt = prompt if isinstance(prompt, str) else prompt[0]
        scorable = images if output_type != "pt" else list(images.permute(0, 2, 3, 1).float().cpu().numpy())
        region_scores = None
        if finishing.regions:
            per_region = [finishing.scorer.score(list(scorable), text, pixels,
                                                 bounding_box(region_view(pixels, boxes)) if boxes else None)
                          for text, pixels in finishing.regions]
            region_scores = [list(result) for result in zip(*per_region)]
            scores = [combine_region_scores(result) for result in region_scores]
        else:
            scores = finishing.scorer.score(list(scorable), prompt, region, view)
        order = rank(scores)
        images = [images[k] for k in order] if isinstance(images, list) else images[order]
        return BlendedLatentDiffusionPipelineOutput(
            images=images, nsfw_content_detected=None if has_nsfw is None else [has_nsfw[k] for k in order],
            scores=[scores[k] for k in order], order=order,
            region_scores=None if region_scores is None else [region_scores[k] for k in order])

    def _progress_off(self) -> bool:
        return bool(getattr(self, "_progress_bar_config", {}).get("disable", False))
