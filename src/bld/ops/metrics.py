"""Image quality numbers for a local edit: background preservation, seam visibility, text match.

Inputs are PIL images or arrays (H, W, 3): float in [0, 1] or uint8 in [0, 255]. `mask` is a PIL
image or an array (H, W) whose white / 1 pixels are the region that was edited; pass the mask the edit
actually used (for background replacement, the inverted one). Masks are binarized at 0.5, as the
pipeline does. A number that is undefined for the given mask (no background left, no mask boundary)
is NaN, never a made-up value.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import PIL.Image
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity

from .cropping import bounding_box


class TextScorer(Protocol):
    """What text_match needs of a scorer (bld.ranking.ClipScorer is one)."""

    def text_match(self, image: Any, prompt: str, mask: Any, view: tuple[int, int, int, int] | None = None) -> float:
        ...


_SSIM_WINDOW = 7  # skimage's default win_size


def _size_text(width: int, height: int) -> str:
    return f"{width}x{height}"


def as_rgb_array(image: Any, name: str = "image") -> np.ndarray:
    """PIL image or (H, W, 3) array -> float64 array (H, W, 3) in [0, 1]; ValueError when it is neither."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must be a PIL image or an array (H, W, 3), got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers in [0, 1] (float) or [0, 255] (uint8), got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"{name} values must lie in [0, 1], got {low:.4g}..{high:.4g}")
    return np.clip(array, 0.0, 1.0)


def as_mask_array(mask: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """PIL image or (H, W) array -> bool array (H, W), True = edited; `size` (width, height) is checked."""
    if isinstance(mask, PIL.Image.Image):
        values = np.asarray(mask.convert("L"), dtype=np.float64) / 255.0
    else:
        values = np.asarray(mask)
        if values.ndim == 3 and values.shape[2] == 1:
            values = values[..., 0]
        if values.ndim != 2:
            raise ValueError(f"mask must be a PIL image or an array (H, W), got shape {values.shape}")
        if values.dtype == np.uint8:
            values = values.astype(np.float64) / 255.0
        else:
            values = values.astype(np.float64)
    if size is not None and (values.shape[1], values.shape[0]) != tuple(size):
        raise ValueError(f"mask is {_size_text(values.shape[1], values.shape[0])} but the image is "
                         f"{_size_text(*size)} (width x height); they must be the same size")
    return values >= 0.5


def _image_and_mask(image: Any, mask: Any, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    rgb = as_rgb_array(image, name)
    return rgb, as_mask_array(mask, (rgb.shape[1], rgb.shape[0]))


def _pair(original: Any, result: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    orig = as_rgb_array(original, "original")
    res = as_rgb_array(result, "result")
    if orig.shape != res.shape:
        raise ValueError(f"original is {_size_text(orig.shape[1], orig.shape[0])} but result is "
                         f"{_size_text(res.shape[1], res.shape[0])} (width x height); they must be the same size")
    return orig, res, as_mask_array(mask, (orig.shape[1], orig.shape[0]))


def background_psnr(original: Any, result: Any, mask: Any) -> float:
    """PSNR in dB (peak 1.0) between original and result over the pixels outside the mask; inf if identical."""
    return _psnr(*_psnr_terms(*_pair(original, result, mask)))


def _psnr_terms(orig: np.ndarray, res: np.ndarray, edited: np.ndarray) -> tuple[float, int]:
    """(sum of squared errors, number of values) outside the mask."""
    outside = ~edited
    return float(np.sum((orig[outside] - res[outside]) ** 2)), int(outside.sum()) * orig.shape[2]


def _psnr(squared_error: float, count: int) -> float:
    if count == 0:
        return math.nan
    if squared_error == 0.0:
        return math.inf
    return 10.0 * math.log10(count / squared_error)


def background_ssim(original: Any, result: Any, mask: Any) -> float:
    """Mean SSIM (skimage, 7x7 window, data_range 1) between original and result over pixels outside the mask.

    Inside the mask the result is first replaced by the original, so the edit itself cannot leak into
    the background score through windows that straddle the mask boundary: the value is 1.0 exactly when
    the background is unchanged, whatever the edit.
    """
    total, count = _ssim_terms(*_pair(original, result, mask))
    return total / count if count else math.nan


def _ssim_terms(orig: np.ndarray, res: np.ndarray, edited: np.ndarray) -> tuple[float, int]:
    """(sum of the SSIM map over the pixels outside the mask, their number)."""
    outside = ~edited
    if not outside.any():
        return 0.0, 0
    if min(orig.shape[:2]) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels, got "
                         f"{_size_text(orig.shape[1], orig.shape[0])}")
    res = np.where(edited[..., None], orig, res)
    _, ssim_map = structural_similarity(orig, res, full=True, channel_axis=-1, data_range=1.0)
    return float(ssim_map.mean(axis=-1)[outside].sum()), int(outside.sum())


_DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def edge_color_difference(result: Any, mask: Any, *, width: int = 2) -> float:
    """Seam visibility: mean CIEDE2000 color difference across the mask boundary (0 = invisible seam).

    Every pair of 4-adjacent pixels with one inside and one outside the mask is a boundary crossing.
    For each crossing, the CIELAB colors of up to `width` pixels on each side, taken along the
    crossing's direction (a straight strip that stops where it would leave its side or the image), are
    averaged per side, and the CIEDE2000 difference (skimage.color.deltaE_ciede2000) of the two means is
    taken. The result is the mean over all crossings; NaN when the mask has no boundary (empty or full).
    A region pasted with a color shift scores about the shift's ΔE; a seamless edit scores about as
    much as the image's own color variation over 2 * width pixels.
    """
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    total, count = _edge_terms(*_image_and_mask(result, mask, "result"), width)
    return total / count if count else math.nan


def _edge_terms(rgb: np.ndarray, edited: np.ndarray, width: int) -> tuple[float, int]:
    """(sum of the color differences across the mask boundary, number of crossings)."""
    height, wide = edited.shape
    lab = rgb2lab(rgb)
    pad = width + 1
    # side: 1 inside the mask, 0 outside the mask, -1 outside the image
    side = np.pad(edited.astype(np.int8), pad, constant_values=-1)
    lab_padded = np.pad(lab, ((pad, pad), (pad, pad), (0, 0)))

    def shifted(array: np.ndarray, dy: int, dx: int, k: int) -> np.ndarray:
        top, left = pad + k * dy, pad + k * dx
        return array[top: top + height, left: left + wide]

    inside_means, outside_means = [], []
    for dy, dx in _DIRECTIONS:
        crossing = (shifted(side, dy, dx, 0) == 1) & (shifted(side, dy, dx, 1) == 0)
        if not crossing.any():
            continue
        for ks, wanted, means in ((range(0, -width, -1), 1, inside_means), (range(1, width + 1), 0, outside_means)):
            running = crossing.copy()
            total = np.zeros_like(lab)
            count = np.zeros(edited.shape)
            for k in ks:
                running &= shifted(side, dy, dx, k) == wanted
                total += shifted(lab_padded, dy, dx, k) * running[..., None]
                count += running
            means.append(total[crossing] / count[crossing][:, None])
    if not inside_means:
        return 0.0, 0
    delta = deltaE_ciede2000(np.concatenate(inside_means), np.concatenate(outside_means), channel_axis=-1)
    return float(np.sum(delta)), int(delta.size)


def compute_metrics(original: Any, result: Any, mask: Any, *, prompt: str | None = None,
                    scorer: TextScorer | None = None,
                    windows: list[tuple[int, int, int, int]] | None = None) -> dict[str, float]:
    """All metrics of one result: background_psnr, background_ssim, edge_delta_e, and text_match (CLIP cosine
    of the prompt and the result with the background blacked out) when both a prompt and a scorer are given.

    windows: (left, top, right, bottom) boxes outside which `result` is `original` pixel for pixel and `mask`
    is empty (a crop-and-stitch edit's crops). The image numbers are then computed on the boxes grown by a
    margin and extended to the whole image exactly, so a 50 MP photo costs what its crops cost; text_match
    then sees the square around the boxes, as the pipelines' ranking does."""
    if windows:
        metrics = _windowed_metrics(original, result, mask, windows)
    else:
        metrics = {"background_psnr": background_psnr(original, result, mask),
                   "background_ssim": background_ssim(original, result, mask),
                   "edge_delta_e": edge_color_difference(result, mask)}
    if scorer is not None and prompt is not None:
        view = bounding_box(windows) if windows else None
        metrics["text_match"] = float(scorer.text_match(result, prompt, mask, view))
    return metrics


_WINDOW_MARGIN = _SSIM_WINDOW + 1  # beyond it an SSIM window and an edge strip see equal pixels only


def _grown_windows(windows: list[tuple[int, int, int, int]], width: int, height: int) -> list[tuple[int, ...]]:
    """The boxes grown by the margin and clipped to the image, overlapping ones merged into their union."""
    boxes = [(max(0, a - _WINDOW_MARGIN), max(0, b - _WINDOW_MARGIN), min(width, c + _WINDOW_MARGIN),
              min(height, d + _WINDOW_MARGIN)) for a, b, c, d in windows]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    boxes.pop(j)
                    merged = True
                    break
            if merged:
                break
    return boxes


def _windowed_metrics(original: Any, result: Any, mask: Any, windows: list[tuple[int, int, int, int]]) -> dict:
    """compute_metrics' image numbers from windows, exact for the whole image: outside them the squared error
    is 0, the SSIM of a background pixel is 1 (its neighbourhood is equal in both images) and there is no
    mask boundary."""
    edited = as_mask_array(mask)
    height, width = edited.shape
    boxes = _grown_windows(windows, width, height)
    if sum(int(edited[y0:y1, x0:x1].sum()) for x0, y0, x1, y1 in boxes) != int(edited.sum()):
        raise ValueError(f"the mask reaches outside the metrics windows {windows}")

    def part(image: Any, box: tuple[int, ...]) -> Any:
        x0, y0, x1, y1 = box
        return image.crop(box) if isinstance(image, PIL.Image.Image) else np.asarray(image)[y0:y1, x0:x1]

    squared_error = ssim_sum = edge_sum = 0.0
    ssim_count = edge_count = 0
    for box in boxes:
        x0, y0, x1, y1 = box
        orig, res, sub = _pair(part(original, box), part(result, box), edited[y0:y1, x0:x1])
        error, _ = _psnr_terms(orig, res, sub)
        total, count = _ssim_terms(orig, res, sub)
        edges, crossings = _edge_terms(res, sub, 2)
        squared_error, ssim_sum, ssim_count = squared_error + error, ssim_sum + total, ssim_count + count
        edge_sum, edge_count = edge_sum + edges, edge_count + crossings
    outside = int((~edited).sum())
    ssim_sum += outside - ssim_count  # every background pixel outside the windows scores 1
    return {"background_psnr": _psnr(squared_error, outside * 3),
            "background_ssim": ssim_sum / outside if outside else math.nan,
            "edge_delta_e": edge_sum / edge_count if edge_count else math.nan}
