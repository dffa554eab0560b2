"""Background reconstruction after decoding (PAPER.md section 2).

The VAE cannot reproduce its input exactly, so after decoding an edit the region outside the mask
has drifted from the original. `reconstruct_background` repairs it with one of the paper's methods:

- ``none``: the decoded result, unchanged.
- ``pixel``: the original's pixels outside the mask, the result's inside (optionally feathered inside
  the mask, so that outside the mask the result is always exactly the original).
- ``poisson``: OpenCV ``seamlessClone`` (NORMAL_CLONE) of the edited region into the original.
- ``latent``: optimize the latent so that its decoding matches the edit inside the mask and the
  original outside it (Adam, lr 0.1).
- ``decoder``: the paper's method: fine-tune the VAE decoder's weights per result with the same loss
  (Adam, lr 1e-4, 75 steps), decode, then restore the decoder bit for bit.

The loss of the last two is ``MSE(D(z) m, x_edit m) + w MSE(D(z) (1 - m), x (1 - m))`` with w = 100,
both means over all pixels, as in the paper. With ``crop=True`` they work only on a box around the
mask (plus a margin, aligned to the VAE factor) and paste the box into the original, so their cost
follows the edited area rather than the image size; outside the box the result is the original.

Tensors are in [-1, 1], shaped (B, 3, H, W); masks are (1 or B, 1, H, W) with 1 = the edited region
(thresholded at 0.5).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

METHODS = ("none", "pixel", "poisson", "latent", "decoder")
NEEDS_VAE = ("latent", "decoder")
DEFAULT_STEPS = 75
DEFAULT_LR = {"latent": 0.1, "decoder": 1e-4}
POISSON_PAD = 4  # pixels of reflected border around each image while cloning
CHECKPOINT_ABOVE_PIXELS = 512 * 512
"""latent / decoder back-propagate through the decoder; on a larger area they recompute the activations of
its blocks (gradient checkpointing) instead of storing them: the same result, for 11.9 instead of 21.6 kB
per pixel with the SD / SDXL VAE in float32 (benchmarks/README.md), so 1024 px takes about 12 GB, not 21."""

log = logging.getLogger(__name__)


# --- Helpers -------------------------------------------------------------------------------------------

def vae_scale_factor(vae) -> int:
    """The VAE's downsampling factor f: 2 ** (number of blocks - 1), 8 for SD."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def decoder_modules(vae) -> list[nn.Module]:
    """The modules that decoding runs: the decoder and, when the VAE has one, post_quant_conv."""
    modules = [vae.decoder]
    if getattr(vae, "post_quant_conv", None) is not None:
        modules.append(vae.post_quant_conv)
    return modules


def vae_device(vae) -> torch.device:
    """Where the VAE computes: the execution device of an offload hook (diffusers' enable_model_cpu_offload
    keeps the weights on the CPU until a call moves them), else the device of its decoder's weights."""
    device = getattr(getattr(vae, "_hf_hook", None), "execution_device", None)
    return torch.device(device) if device is not None else next(vae.decoder.parameters()).device


def _shift(vae) -> float:
    return getattr(vae.config, "shift_factor", None) or 0.0


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """D(latents / scaling_factor + shift) in [-1, 1] (not clamped); gradients flow when enabled."""
    return vae.decode(latents / vae.config.scaling_factor + _shift(vae), return_dict=False)[0]


@torch.no_grad()
def encode_mean(vae, images: torch.Tensor) -> torch.Tensor:
    """(posterior mean of E(images) - shift) * scaling_factor, in float32; runs in the encoder's dtype, or in
    float32 when a float16 VAE's config asks for upcasting (SDXL's VAE overflows to NaN in float16)."""
    with _encoder_precision(vae) as dtype:
        mean = vae.encode(images.to(device=vae_device(vae), dtype=dtype), return_dict=False)[0].mode()
    return ((mean.float() - _shift(vae)) * vae.config.scaling_factor).float()


@contextmanager
def _encoder_precision(vae) -> Iterator[torch.dtype]:
    """The dtype to encode in; a float16 encoder with force_upcast runs in float32 meanwhile (exact round trip)."""
    dtype = next(vae.encoder.parameters()).dtype
    modules = [m for m in (vae.encoder, getattr(vae, "quant_conv", None)) if m is not None]
    if dtype != torch.float16 or not getattr(vae.config, "force_upcast", False):
        yield dtype
        return
    for module in modules:
        module.float()
    try:
        yield torch.float32
    finally:
        for module in modules:
            module.half()


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), over the pixels where `where` (broadcast) is true."""
    diff = (a.float() - b.float()) ** 2
    if where is not None:
        diff = diff[where.expand_as(diff).bool()]
    mse = diff.mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def crop_box(mask: torch.Tensor, margin: int, factor: int = 1) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the box around the nonzero pixels of the (H, W) `mask`, grown by
    `margin` px on each side, aligned outwards to multiples of `factor`, clipped to the image; None if
    the mask is empty. H and W are assumed to be multiples of `factor`."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    height, width = mask.shape
    top = max(0, int(rows[0]) - margin) // factor * factor
    left = max(0, int(cols[0]) - margin) // factor * factor
    bottom = min(height, -(-(int(rows[-1]) + 1 + margin) // factor) * factor)
    right = min(width, -(-(int(cols[-1]) + 1 + margin) // factor) * factor)
    return top, bottom, left, right


@contextmanager
def preserved_decoder(vae) -> Iterator[None]:
    """Run a block that may change the VAE's decoder, then restore it exactly, even on an exception.

    On entry, snapshot (clone) every parameter and buffer of the decoder and post_quant_conv, with
    their dtype, requires_grad flag and .grad, and the train/eval mode of every submodule of the VAE.
    On exit (in `finally`, so also after KeyboardInterrupt) put the same Parameter objects back with
    the snapshot's values, dtype and flags: the weights are bit-identical to those before the block.
    """
    params, buffers = [], []
    for module in decoder_modules(vae):
        for sub in module.modules():
            for name, p in sub._parameters.items():
                if p is not None:
                    grad = None if p.grad is None else p.grad.detach().clone()
                    params.append((sub, name, p, p.detach().clone(), p.requires_grad, grad))
            for name, b in sub._buffers.items():
                if b is not None:
                    buffers.append((sub, name, b, b.detach().clone()))
    modes = [(sub, sub.training) for sub in vae.modules()]
    try:
        yield
    finally:
        with torch.no_grad():  # values go back where the weights are now (an offload hook may have moved them)
            for sub, name, p, value, requires_grad, grad in params:
                p.data = value.to(p.device)
                p.grad = None if grad is None else grad.to(p.device)
                p.requires_grad_(requires_grad)
                sub._parameters[name] = p
            for sub, name, b, value in buffers:
                b.data = value.to(b.device)
                sub._buffers[name] = b
        for sub, training in modes:
            sub.training = training


def _float32_decoder(vae) -> list[nn.Parameter]:
    """Put the decoder in float32 and eval mode, in place (only inside `preserved_decoder`, which undoes
    it); return its floating-point parameters."""
    modules = decoder_modules(vae)
    for module in modules:
        module.float().eval()
    return [p for module in modules for p in module.parameters() if p.is_floating_point()]


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    pixels = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.permute(1, 2, 0).to(torch.uint8).cpu().numpy()


def _from_uint8(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 127.5 - 1


# --- Validation ----------------------------------------------------------------------------------------

def _check(method, original, edited, mask, vae, latents, feather, steps, lr, background_weight, crop_margin):
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")
    if method in NEEDS_VAE and vae is None:
        raise ValueError(f"method={method!r} needs the VAE (vae=...); without one use none, pixel or poisson")
    for name, t in (("original", original), ("edited", edited), ("mask", mask)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor (B, C, H, W), got {shape}")
    b, c, h, w = edited.shape
    if c != 3:
        raise ValueError(f"edited must have 3 channels, got shape {tuple(edited.shape)}")
    if original.shape[1:] != edited.shape[1:] or original.shape[0] not in (1, b):
        raise ValueError(f"original has shape {tuple(original.shape)}: it must be (1 or {b}, 3, {h}, {w}) "
                         f"like edited {tuple(edited.shape)}")
    if mask.shape[1:] != (1, h, w) or mask.shape[0] not in (1, b):
        raise ValueError(f"mask has shape {tuple(mask.shape)}: it must be (1 or {b}, 1, {h}, {w})")
    if not isinstance(feather, (int, float)) or feather < 0:
        raise ValueError(f"feather={feather!r} must be a number of pixels >= 0")
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps={steps!r} must be an integer >= 0")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr={lr!r} must be > 0")
    if not background_weight >= 0:
        raise ValueError(f"background_weight={background_weight!r} must be >= 0")
    if not isinstance(crop_margin, int) or crop_margin < 0:
        raise ValueError(f"crop_margin={crop_margin!r} must be an integer number of pixels >= 0")
    if method in NEEDS_VAE:
        f = vae_scale_factor(vae)
        if h % f or w % f:
            raise ValueError(f"images are {w}x{h}: for method={method!r} each side must be a multiple of the VAE "
                             f"factor {f} (reconstruct_images pads automatically)")
        if latents is not None:
            expected = (b, vae.config.latent_channels, h // f, w // f)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents have shape {tuple(latents.shape)}: expected {expected} for {b} "
                                 f"images of {w}x{h}")


# --- The methods ---------------------------------------------------------------------------------------

def pixel_blend(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor, feather: float = 0) -> torch.Tensor:
    """The original outside the mask, the edit inside; with feather > 0 the edit's weight ramps up over
    the `feather` px of the mask nearest to the unmasked region: (d - 0.5) / feather clipped to [0, 1],
    d = Euclidean distance (px) to the nearest unmasked pixel. Outside the mask: exactly the original."""
    if feather > 0:
        weights = []
        for m in mask[:, 0].bool().cpu().numpy():
            if m.all():
                weights.append(np.ones(m.shape, np.float32))
            else:
                d = ndimage.distance_transform_edt(m)
                weights.append(np.clip((d - 0.5) / feather, 0, 1).astype(np.float32))
        weight = torch.from_numpy(np.stack(weights))[:, None].to(edited.device)
    else:
        weight = mask.float()
    mixed = original + weight * (edited - original)
    return torch.where(weight >= 1, edited, torch.where(weight > 0, mixed, original))


def poisson_blend(original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """OpenCV seamlessClone (NORMAL_CLONE) of each connected component of the mask, on its bounding box.

    Each image is padded by POISSON_PAD reflected pixels (the mask is extended into the padding where it
    touches the border), so that regions at the image border clone correctly, then cropped back. Inside
    the mask the result is the Poisson solution (uint8 precision); outside it, exactly the original (also
    inside a component's bounding box, e.g. the kept rectangle of an inverted mask). Components thinner
    than 3 px have no interior to solve and keep the original.
    """
    p = POISSON_PAD
    result = original.float().clone()
    for i in range(edited.shape[0]):
        src = cv2.copyMakeBorder(_to_uint8(edited[i]), p, p, p, p, cv2.BORDER_REFLECT_101)
        dst = cv2.copyMakeBorder(_to_uint8(original[i]), p, p, p, p, cv2.BORDER_REFLECT_101)
        m = mask[i, 0].bool().cpu().numpy().astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        changed = np.zeros(m.shape, bool)
        for label in range(1, count):
            left, top, width, height = stats[label, :4]
            if width < 3 or height < 3:
                continue
            component = cv2.copyMakeBorder((labels == label).astype(np.uint8) * 255, p, p, p, p,
                                           cv2.BORDER_REPLICATE)
            component[[0, -1], :] = 0  # seamlessClone zeroes this ring itself; do it first to know the box
            component[:, [0, -1]] = 0
            x, y, w, h = cv2.boundingRect(component)
            dst = cv2.seamlessClone(src, dst, component, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
            changed |= labels == label
        if changed.any():
            cloned = _from_uint8(dst[p:-p, p:-p]).to(result.device)
            where = torch.from_numpy(changed).to(result.device)
            result[i] = torch.where(where, cloned, result[i])
    return result


def _fit(method, vae, z, original, edited, mask, steps, lr, weight, params, bar) -> torch.Tensor:
    """Minimize MSE(D(z) m, edit m) + weight MSE(D(z) (1 - m), original (1 - m)) with Adam over the latent
    (method 'latent') or the decoder's weights ('decoder'); return the final decoding."""
    for p in params:
        p.requires_grad_(method == "decoder")
    z = z.detach().float().clone().requires_grad_(method == "latent")
    optimizer = torch.optim.Adam([z] if method == "latent" else params, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        out = decode(vae, z)
        loss = F.mse_loss(out * mask, edited * mask) + weight * F.mse_loss(out * (1 - mask), original * (1 - mask))
        loss.backward()
        optimizer.step()
        bar.update()
    with torch.no_grad():
        return decode(vae, z.detach())


@contextmanager
def _decoder_checkpointing(vae, on: bool) -> Iterator[None]:
    """Gradient checkpointing of the VAE while the block runs, when `on` and the VAE supports it; the VAE's
    own setting is restored afterwards."""
    was_on = bool(getattr(vae, "is_gradient_checkpointing", False))
    if not on or was_on or not getattr(vae, "_supports_gradient_checkpointing", False):
        yield
        return
    vae.enable_gradient_checkpointing()
    try:
        yield
    finally:
        vae.disable_gradient_checkpointing()


def _optimize(method, vae, original, edited, mask, latents, steps, lr, weight, crop, crop_margin, progress):
    """latent / decoder: one independent optimization per image, inside preserved_decoder. Runs with autograd
    on also under torch.no_grad() or torch.inference_mode(), on the device the VAE computes on."""
    device, f = vae_device(vae), vae_scale_factor(vae)
    with torch.inference_mode(False), torch.enable_grad():
        # clones: tensors made under inference_mode cannot take part in autograd
        original, edited, mask = (t.to(device=device, dtype=torch.float32).clone() for t in (original, edited, mask))
        latents = None if latents is None else latents.to(device).clone()
        batch, (_, _, height, width) = edited.shape[0], edited.shape
        result = original.clone()
        with preserved_decoder(vae):
            params = _float32_decoder(vae)
            initial = [p.detach().clone() for p in params] if method == "decoder" and batch > 1 else None
            for i in range(batch):
                box = crop_box(mask[i, 0] > 0, crop_margin, f) if crop else (0, height, 0, width)
                if box is None:  # crop of an empty mask: nothing was edited, the result is the original
                    continue
                top, bottom, left, right = box
                x, e, m = (t[i:i + 1, :, top:bottom, left:right] for t in (original, edited, mask))
                if latents is not None:
                    z = latents[i:i + 1, :, top // f:bottom // f, left // f:right // f]
                else:
                    z = encode_mean(vae, e)
                if initial is not None and i > 0:
                    with torch.no_grad():
                        for p, value in zip(params, initial):
                            p.copy_(value)
                area = (bottom - top) * (right - left)
                checkpointing = area > CHECKPOINT_ABOVE_PIXELS
                if checkpointing and i == 0:
                    log.info("%s reconstruction of a %dx%d area: recomputing the decoder's activations to save "
                             "memory (crop=True works on the mask's box only)", method, right - left, bottom - top)
                desc = f"{method} reconstruction" + (f" {i + 1}/{batch}" if batch > 1 else "")
                with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar, \
                        _decoder_checkpointing(vae, checkpointing):
                    out = _fit(method, vae, z, x, e, m, steps, lr, weight, params, bar)
                result[i, :, top:bottom, left:right] = out[0].detach()
    return result


def reconstruct_background(method: str, original: torch.Tensor, edited: torch.Tensor, mask: torch.Tensor, *,
                           vae=None, latents: torch.Tensor | None = None, feather: float = 0,
                           steps: int | None = None, lr: float | None = None, background_weight: float = 100.0,
                           crop: bool = False, crop_margin: int = 32, progress: bool = False) -> torch.Tensor:
    """Repair the background of decoded edits (PAPER.md section 2).

    method: one of METHODS. original: (1 or B, 3, H, W) in [-1, 1]; edited: (B, 3, H, W) in [-1, 1], the
    decoded results; mask: (1 or B, 1, H, W), 1 = edited region (thresholded at 0.5).
    vae: the AutoencoderKL (needed by latent and decoder; the decoder method changes it only while it
    runs and restores it bit for bit, also on exceptions; the encoder is never changed).
    latents: (B, C, H/f, W/f), the final latents that produced `edited`, already multiplied by the
    scaling factor; when None the posterior mean of `edited` is used. For latent and decoder, H and W
    must be multiples of f.
    feather (pixel): width in px of the ramp inside the mask; outside the mask stays exactly the original.
    steps / lr: optimization steps and Adam learning rate (defaults 75 and 0.1 for latent, 1e-4 for
    decoder). background_weight: weight of the background term of the loss (the paper's 100).
    crop / crop_margin (latent, decoder): optimize only on the box around the mask grown by crop_margin
    px and aligned to f; outside the box the result is the original.
    progress: a tqdm bar over the optimization steps.
    Returns (B, 3, H, W) in [-1, 1] (not clamped) with edited's dtype and device; no autograd graph.
    """
    _check(method, original, edited, mask, vae, latents, feather, steps, lr, background_weight, crop_margin)
    if method == "none":
        return edited.detach().clone()
    batch = edited.shape[0]
    x = original.detach().float().expand(batch, -1, -1, -1)
    e = edited.detach().float()
    m = (mask.detach().float() >= 0.5).float().expand(batch, -1, -1, -1).to(e.device)
    x = x.to(e.device)
    if method == "pixel":
        out = pixel_blend(x, e, m, feather)
    elif method == "poisson":
        out = poisson_blend(x, e, m)
    else:
        out = _optimize(method, vae, x, e, m, None if latents is None else latents.detach().float(),
                        DEFAULT_STEPS if steps is None else steps, DEFAULT_LR[method] if lr is None else lr,
                        float(background_weight), crop, crop_margin, progress)
    return out.to(device=edited.device, dtype=edited.dtype)


# --- PIL convenience -----------------------------------------------------------------------------------

def _pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)[None] / 127.5 - 1


def _tensor_to_pil(image: torch.Tensor) -> PIL.Image.Image:
    return PIL.Image.fromarray(_to_uint8(image))


def reconstruct_images(method: str, original: PIL.Image.Image, edited: list[PIL.Image.Image],
                       mask: PIL.Image.Image, *, vae=None, **kwargs) -> list[PIL.Image.Image]:
    """`reconstruct_background` on PIL images: results already produced, e.g. the ones a user keeps.

    original, every edited image and mask must have the same size; the mask is white (>= 128 in
    grayscale) where the image was edited. The latents are the VAE posterior mean of each edited image.
    For latent and decoder, a size that is not a multiple of the VAE factor is padded (reflected image,
    unmasked padding) up to the next multiple, and the results are cropped back. kwargs: those of
    reconstruct_background (feather, steps, lr, background_weight, crop, crop_margin, progress).
    Returns one RGB image per edited image.
    """
    if isinstance(edited, PIL.Image.Image):
        edited = [edited]
    images = [original, *edited, mask]
    if not edited or not all(isinstance(im, PIL.Image.Image) for im in images):
        raise ValueError("original, mask and each edited image must be PIL images, with at least one edited image")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"original, edited images and mask must have the same size, got sizes "
                         f"{sorted(sizes)} (width x height)")
    width, height = original.size
    x = _pil_to_tensor(original)
    e = torch.cat([_pil_to_tensor(im) for im in edited])
    m = torch.from_numpy((np.asarray(mask.convert("L")) >= 128).astype(np.float32))[None, None]
    if method in NEEDS_VAE and vae is not None:
        f = vae_scale_factor(vae)
        pad_h, pad_w = -height % f, -width % f
        if pad_h or pad_w:
            if pad_h >= height or pad_w >= width:  # reflection needs more pixels than the padding
                x, e = (F.pad(t, (0, pad_w, 0, pad_h), mode="replicate") for t in (x, e))
            else:
                x, e = (F.pad(t, (0, pad_w, 0, pad_h), mode="reflect") for t in (x, e))
            m = F.pad(m, (0, pad_w, 0, pad_h))
        device = vae_device(vae)
        x, e, m = x.to(device), e.to(device), m.to(device)
    out = reconstruct_background(method, x, e, m, vae=vae, **kwargs)
    return [_tensor_to_pil(image[:, :height, :width]) for image in out]
