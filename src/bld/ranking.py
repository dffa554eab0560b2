"""Prediction ranking (PAPER.md section 4): CLIP cosine of the prompt and each result with its background
blacked out by the mask, best first.

`ClipScorer` wraps any transformers `CLIPModel` (the paper uses openai/clip-vit-base-patch16) and its
tokenizer. Image preprocessing is done here in torch (a square view, resized to the model's image size
with antialiased bicubic, CLIP mean/std), so no image processor or torchvision is needed. The view holds
the whole masked region, also at the ends of wide or tall images (`ClipScorer.preprocess`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .hub import offline_requested
from .ops.metrics import as_mask_array, as_rgb_array

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Box = tuple[int, int, int, int]  # (left, top, right, bottom), ends excluded


def _looks_like_path(name: str) -> bool:
    """A hub id is 'name' or 'owner/name'; anything absolute, relative-dotted or deeper is a folder path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, prefixed by its type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"


class ClipScorer:
    """Scores images against a prompt by CLIP cosine similarity, with everything outside the mask blacked out."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def from_pretrained(cls, name_or_folder: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, *, local_files_only: bool | None = None) -> ClipScorer:
        """Load a transformers CLIPModel and its tokenizer from a folder or a hub id; ValueError if that fails.

        local_files_only: None follows HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set at call time.
        """
        from transformers import AutoConfig, AutoTokenizer, CLIPModel

        name = str(name_or_folder)
        if name.startswith("~"):
            name = str(Path(name).expanduser())
        if local_files_only is None:
            local_files_only = offline_requested()
        if not Path(name).expanduser().is_dir() and (isinstance(name_or_folder, Path) or _looks_like_path(name)):
            raise ValueError(f"could not load a CLIP model from {name!r}: no such folder")
        try:
            config = AutoConfig.from_pretrained(name, local_files_only=local_files_only)
            if config.model_type != "clip":
                raise OSError(f"its config is of model_type {config.model_type!r}, not a full 'clip' model")
            model, info = CLIPModel.from_pretrained(name, config=config, local_files_only=local_files_only,
                                                    output_loading_info=True)
            missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("position_ids"))
            if missing:
                raise OSError(f"{len(missing)} weights missing from the checkpoint (not a full CLIPModel?), "
                              f"e.g. {missing[0]}")
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
        except Exception as exc:  # noqa: BLE001 - any loading failure becomes one readable line
            raise ValueError(f"could not load a CLIP model from {name!r}: {_one_line(exc)}") from exc
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: Sequence[Any], mask: Any = None, view: Box | None = None) -> torch.Tensor:
        """Images -> CLIP pixel values (B, 3, S, S) on the model's device and dtype; outside `mask` set to black.

        mask: white / 1 = the edited region that is kept; None keeps the whole image. Without a mask (or
        with an empty one) the view is CLIP's usual center square. With one, it is the square that holds
        the mask's whole bounding box: the image's short side, slid along the long side to center the box,
        and grown (with black borders) when the box is longer than the short side. A square image is thus
        seen whole, and an edit at either end of a wide or tall image is never cut away.

        view: a (left, top, right, bottom) box the model drew at (crop-and-stitch's crops); the square is
        then the one that holds it and the mask's box, centered on it, so CLIP sees the edit at the scale it
        was drawn, not shrunk with the whole photo.
        """
        size = self.image_size
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
        batch, keeps = [], {}
        for i, image in enumerate(images):
            shape = _height_width(image)
            box = None
            if mask is not None:
                if shape not in keeps:
                    keep = as_mask_array(mask, (shape[1], shape[0]))
                    keeps[shape] = keep, _bounding_box(keep)
                keep, box = keeps[shape]
            if box is not None:  # only the square's pixels are converted: a 50 MP photo costs its square
                y0, x0, side = _square_window(shape, box, view)
                ys, xs = slice(max(0, y0), min(shape[0], y0 + side)), slice(max(0, x0), min(shape[1], x0 + side))
                part = (image.crop((xs.start, ys.start, xs.stop, ys.stop)) if isinstance(image, PIL.Image.Image)
                        else np.asarray(image)[ys, xs])
                rgb = as_rgb_array(part, f"image {i}") * keep[ys, xs][..., None]
                x = torch.zeros(3, side, side)
                x[:, ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0] = torch.from_numpy(
                    np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
            else:
                rgb = as_rgb_array(image, f"image {i}")
                if mask is not None:
                    rgb = rgb * keep[..., None]
                x = _center_square(torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1),
                                   size)
            if x.shape[1:] != (size, size):
                x = F.interpolate(x[None], size=(size, size), mode="bicubic", antialias=True,
                                  align_corners=False)[0].clamp(0.0, 1.0)
            batch.append((x - mean) / std)
        return torch.stack(batch).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """Unit-norm CLIP text embedding (1, D) of `prompt` (truncated to the model's context length)."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        max_length = int(self.model.config.text_config.max_position_embeddings)
        max_length = min(max_length, int(getattr(self.tokenizer, "model_max_length", max_length)))
        tokens = self.tokenizer([prompt], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt")
        out = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                    attention_mask=tokens["attention_mask"].to(self.device))
        features = self.model.text_projection(out.pooler_output).float()
        return F.normalize(features, dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Any], mask: Any = None, view: Box | None = None) -> torch.Tensor:
        """Unit-norm CLIP image embeddings (B, D) of the masked images, computed in batches."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start: start + self.batch_size], mask, view)
            out = self.model.vision_model(pixel_values=pixels)
            chunks.append(self.model.visual_projection(out.pooler_output).float())
        return F.normalize(torch.cat(chunks), dim=-1)

    def score(self, images: Sequence[Any], prompt: str, mask: Any, view: Box | None = None) -> list[float]:
        """CLIP cosine in [-1, 1] of `prompt` and each image with everything outside `mask` black (None: no mask),
        seen through the square of `preprocess` (`view`: the box the model drew at, if not the whole image)."""
        images = list(images)
        if not images:
            return []
        text = self.text_embedding(prompt)
        cosine = (self.image_embeddings(images, mask, view) @ text.T)[:, 0]
        return [float(c) for c in cosine.clamp(-1.0, 1.0).cpu()]

    def text_match(self, image: Any, prompt: str, mask: Any, view: Box | None = None) -> float:
        """Cosine similarity of `prompt` and one image with everything outside `mask` black."""
        return self.score([image], prompt, mask, view)[0]


def _bounding_box(keep: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), ends excluded, of the True pixels of `keep`; None when there are none."""
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _window(start: int, end: int, length: int, side: int) -> int:
    """First index of a window of `side` along an axis of `length` that centers [start, end): inside the
    axis when it fits, else centered on the axis (negative: the window begins before it)."""
    if side >= length:
        return (length - side) // 2
    return min(max(0, (start + end - side) // 2), length - side)


def _height_width(image: Any) -> tuple[int, int]:
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    shape = np.shape(image)
    return int(shape[0]), int(shape[1])


def _square_window(shape: tuple[int, int], box: tuple[int, int, int, int],
                   view: Box | None = None) -> tuple[int, int, int]:
    """(top, left, side) of the square view of an image of `shape` (height, width) that holds `box` (top,
    bottom, left, right): the image's short side (or the box's longer side when that is longer), centered
    on the box; with a `view` (left, top, right, bottom), the square of the longer of its sides and the
    box's, centered on the view. Top and left are negative where the square begins before the image (black
    there)."""
    height, width = shape
    top, bottom, left, right = box
    if view is not None:
        v_left, v_top, v_right, v_bottom = view
        side = max(v_bottom - v_top, v_right - v_left, bottom - top, right - left)
        top, bottom, left, right = v_top, v_bottom, v_left, v_right
    else:
        side = max(min(height, width), bottom - top, right - left)
    return _window(top, bottom, height, side), _window(left, right, width, side), side


def _center_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's usual view: the shorter side resized to `size` (bicubic, antialiased), then the center square."""
    height, width = x.shape[1:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", antialias=True,
                          align_corners=False)[0].clamp(0.0, 1.0)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, top: top + size, left: left + size]


def rank(scores: Sequence[float]) -> list[int]:
    """Indices of `scores` from best (highest) to worst; ties keep their order, NaN goes last."""
    values = [float(s) for s in scores]

    def key(i: int) -> tuple[bool, float]:
        return (True, 0.0) if math.isnan(values[i]) else (False, -values[i])

    return sorted(range(len(values)), key=key)


def combine_region_scores(scores: Sequence[float]) -> float:
    """A multi-region result's score from its regions' scores (each region's prompt inside its own pixels): the
    lowest. An edit succeeds when every region does, so a result that misses one region ranks below one that
    gets them all, however well it does the others (a mean would let a strong region hide a failed one)."""
    return float(min(scores))
