"""`bld serve`: a web page to paint a mask, type a prompt and get ranked edits.

The handlers here are plain functions over PIL images, numpy arrays and parameter values, so the tests
call them without a browser: `load_source` (an uploaded image file), `mask_layer` (an uploaded mask
file, shown as a paint layer), `mask_from_editor` (the painted layers), `params_from_values` (the page's
controls) and `WebEditor.edit` (one edit request: checks, the shared model under a lock, progress,
cancellation, result PNGs carrying their parameters). `build_app` wires them into a Gradio page whose
parameter controls are generated from `EditParams`' field metadata, as the CLI's flags are; `serve` loads
the model once and serves the page. Gradio is imported only by those two.
"""

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..editing import (
    edit_layout,
    json_safe,
    model_name,
    result_metadata,
    run_edit,
    shaped_region,
    unknown_words,
    with_seed,
)
from ..image_io import (
    MAX_EDIT_PIXELS,
    MAX_PIXELS,
    InputError,
    check_same_aspect,
    load_image,
    load_mask,
    save_png_atomic,
)
from ..model_defaults import model_edit_defaults
from ..params import NOT_CONTROLS, EditParams, Region, field_flag, field_value_type

MAX_UPLOAD_MB = 50
"""Largest accepted upload (image or mask file), in MiB; Gradio refuses larger ones before they arrive."""

PRIMARY_FIELDS = ("num_inference_steps", "guidance_scale", "skip_fraction", "num_images", "seed", "invert_mask",
                  "mask_dilation_iterations", "reconstruction")
"""EditParams fields shown up front; every other one (but the prompts) goes under "More parameters"."""

TEXT_FIELDS = ("prompt", "negative_prompt")
EXTRA_REGIONS = 3
"""Region rows the page offers beyond the main mask and prompt, each its own painted mask and prompt."""
PAINT_ALPHA_MIN = 32
"""A painted layer pixel with at least this alpha (of 255) belongs to the mask: strokes are semi-transparent,
and the faint fringe an eraser leaves at its edge does not count."""
BRUSH_OPACITY = 0.6  # the full-strength brushes' opacity; the soft brush paints half of it
MASK_COLOR = (255, 0, 255)
MASK_ALPHA = 160
KEEP_REQUESTS = 32
"""Result folders of this many recent requests are kept on disk; older ones are deleted."""

ProgressFn = Callable[..., Any]


CANCELLED_MESSAGE = "**Cancelled:** nothing was produced."
"""Shown by Stop and by the cancelled edit itself (both write the status; whichever lands last, it reads the same)."""


class EditCancelled(Exception):
    """Raised inside the sampling loop when the request's Stop button was pressed."""


@dataclasses.dataclass
class EditOutcome:
    """What one edit request shows on the page."""

    message: str
    ok: bool = False
    gallery: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (PNG path, caption), best first
    table: list[list[Any]] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)
    params: EditParams | None = None
    results: list[dict] = dataclasses.field(default_factory=list)  # best first: file, seed, score, metrics


TABLE_HEADERS = ["rank", "seed", "text match", "background PSNR", "background SSIM", "edge ΔE", "file"]


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def error_message(exc: BaseException | str) -> str:
    """A refusal as the page shows it."""
    return f"**Error:** {_oneline(exc) if isinstance(exc, BaseException) else exc}"


def _shown_name(path: str | os.PathLike) -> str:
    return Path(path).name


def _rename_in_message(exc: InputError, path: str | os.PathLike) -> InputError:
    """The library names files by their full path; the page shows only the name the user uploaded."""
    return InputError(str(exc).replace(repr(os.fspath(path)), repr(_shown_name(path))))


def check_upload(path: str | os.PathLike, what: str, max_mb: float = MAX_UPLOAD_MB) -> None:
    size = Path(path).stat().st_size
    if size > max_mb * 2**20:
        raise InputError(f"the {what} {_shown_name(path)!r} is {size / 2**20:.1f} MB; the upload limit is "
                         f"{max_mb:g} MB: downscale or compress it")


def load_source(path: str | os.PathLike, *, max_mb: float = MAX_UPLOAD_MB,
                max_pixels: int = MAX_PIXELS) -> PIL.Image.Image:
    """An uploaded image file as RGB, through the library's checks (size, pixel count, format, EXIF, alpha)."""
    check_upload(path, "image", max_mb)
    try:
        return load_image(path, max_pixels=max_pixels)
    except InputError as exc:
        raise _rename_in_message(exc, path) from None


def editor_value(image: PIL.Image.Image, layer: np.ndarray | None = None) -> dict:
    """The image editor's value: the image as background and at most one paint layer."""
    return {"background": image, "layers": [] if layer is None else [layer], "composite": None}


def mask_layer(image: PIL.Image.Image, path: str | os.PathLike, *, max_mb: float = MAX_UPLOAD_MB) -> np.ndarray:
    """An uploaded mask file as a paint layer (RGBA, painted where the mask is white) of the image's size,
    so it shows on the image and the brush and eraser can change it."""
    check_upload(path, "mask", max_mb)
    try:
        mask = check_same_aspect(image, load_mask(path), image_name="uploaded image", mask_name=_shown_name(path))
    except InputError as exc:
        raise _rename_in_message(exc, path) from None
    inside = np.asarray(mask) >= 128
    layer = np.zeros((image.height, image.width, 4), np.uint8)
    layer[inside] = (*MASK_COLOR, MASK_ALPHA)
    return layer


def mask_from_editor(value: Any, image: PIL.Image.Image, soft: bool = False) -> PIL.Image.Image:
    """The mask (mode L, white = edit, the image's size) from what the page sends.

    `value` is the image editor's value (a dict whose "layers" are RGBA arrays or images: every pixel
    painted on any layer is in the mask), or directly a mask: a PIL image or a (H, W) array (nonzero or
    >= 128 for uint8 = edit). None or no layers is an empty mask. soft: the paint's opacity is the
    strength (the full brushes' opacity = 1, the soft brush's half), for soft_mask edits.
    """
    if isinstance(value, dict):
        layers = [np.asarray(layer) for layer in (value.get("layers") or []) if layer is not None]
        strength = np.zeros((image.height, image.width), np.uint8)
        for layer in layers:
            alpha = layer[..., 3] if layer.ndim == 3 and layer.shape[2] == 4 else np.full(layer.shape[:2], 255)
            alpha = np.where(alpha >= PAINT_ALPHA_MIN, alpha, 0).astype(np.float32)
            level = np.clip(alpha / (255 * BRUSH_OPACITY), 0, 1) if soft else (alpha > 0).astype(np.float32)
            painted = PIL.Image.fromarray(np.round(level * 255).astype(np.uint8))
            painted = check_same_aspect(image, painted, image_name="uploaded image", mask_name="painted mask")
            strength = np.maximum(strength, np.asarray(painted))
        return PIL.Image.fromarray(strength)
    if value is None:
        return PIL.Image.new("L", image.size, 0)
    if isinstance(value, PIL.Image.Image):
        mask = value.convert("L")
    else:
        array = np.asarray(value)
        array = array >= 128 if array.dtype == np.uint8 else array.astype(bool)
        mask = PIL.Image.fromarray(array.astype(np.uint8) * 255)
    return check_same_aspect(image, mask, image_name="uploaded image", mask_name="mask")


def control_label(field: dataclasses.Field) -> str:
    """The CLI flag's words: --skip-fraction -> 'skip fraction'."""
    return field_flag(field).lstrip("-").replace("-", " ")


def params_from_values(prompt: str | None, negative_prompt: str | None, values: dict[str, Any]) -> EditParams:
    """EditParams from the page's controls (field name -> value; missing fields keep their defaults).

    Sliders send floats: whole numbers become ints for integer fields. Optional numbers come from text
    boxes: empty is None (the field's default), anything else must parse as the field's type. EditParams
    validates, and its message reaches the page.
    """
    clean: dict[str, Any] = {}
    for field in dataclasses.fields(EditParams):
        if field.name in TEXT_FIELDS or field.name in NOT_CONTROLS or field.name not in values:
            continue
        value, kind = values[field.name], field_value_type(field)
        if isinstance(value, str) and kind is not str:
            value = _parse_number(field, value.strip(), kind)
        if isinstance(value, float) and kind is int and value.is_integer():
            value = int(value)
        clean[field.name] = value
    negative = (negative_prompt or "").strip() or None
    return EditParams(prompt=(prompt or "").strip(), negative_prompt=negative, **clean)


def _parse_number(field: dataclasses.Field, text: str, kind: type) -> int | float | None:
    if not text:
        return None
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{control_label(field)} must be {what} (or empty for the default), got {text!r}") from None


def check_web_edit_size(image: PIL.Image.Image, params: EditParams) -> None:
    """The CLI's limit on whole-image edits at full size (image_io.MAX_EDIT_PIXELS), worded for the page."""
    if (params.crop == "off" and params.width is None and params.height is None
            and image.width * image.height > MAX_EDIT_PIXELS):
        raise InputError(f"the image is {image.width}x{image.height}; editing above {MAX_EDIT_PIXELS // 2**20} MP "
                         f"whole at full size needs too much memory: set crop to auto, or a width (or height) "
                         f"under More parameters to edit at a smaller size; the results are resized back")


def checked_mask(image: PIL.Image.Image, mask: Any, params: EditParams) -> tuple[PIL.Image.Image, np.ndarray]:
    """The page's mask (see mask_from_editor) and the region an edit with `params` changes, refused with a
    message for the page when it is empty or everything, or when the edit would be too large."""
    mask_image = mask_from_editor(mask, image, soft=params.soft_mask)
    region = shaped_region(mask_image, params, image.size)
    if not region.any():
        raise InputError("the mask is empty: paint over the region to change (or upload a mask)"
                         + (" — with 'invert mask' the painted region is kept, so leave some unpainted"
                            if params.invert_mask else ""))
    if region.all():
        raise InputError("the mask covers the whole image: nothing would be kept; paint only the region "
                         "to change" + (" (with 'invert mask', paint the region to keep)"
                                       if params.invert_mask else ""))
    check_web_edit_size(image, params)
    return mask_image, region


def checked_regions(image: PIL.Image.Image, mask_image: PIL.Image.Image, rows: list[tuple[Any, str]] | None,
                    params: EditParams) -> tuple[EditParams, list[PIL.Image.Image], np.ndarray | None]:
    """The page's extra region rows (each the editor's value and a prompt; a row with neither is unused) as
    params with their regions, the regions' masks, and the union of all regions (None without any); a row
    with only one of the two, or a region left with nothing of its own, is refused with its number."""
    used = [(value, (text or "").strip()) for value, text in rows or []]
    masks, regions = [], []
    for number, (value, text) in enumerate(used, start=2):
        mask = mask_from_editor(value, image, soft=params.soft_mask)
        painted = bool(np.asarray(mask).any())
        if not painted and not text:
            continue
        if not painted:
            raise InputError(f"region {number} has a prompt but no mask: paint over its region (or clear its prompt)")
        if not text:
            raise InputError(f"region {number} has a mask but no prompt: type what it should show")
        masks.append(mask)
        regions.append(Region(text))
    if not regions:
        return params, [], None
    if params.invert_mask:
        raise InputError("'invert mask' does not apply to several regions: paint each region to change")
    params = dataclasses.replace(params, regions=tuple(regions))
    union = edit_layout(mask_image, masks, params, image.size).union
    if union.all():
        raise InputError("the regions cover the whole image together: nothing would be kept")
    return params, masks, union


def _whole_pixels(value: Any, name: str) -> int:
    """A page's number (a float from a number box, or empty) as whole pixels."""
    if value in (None, ""):
        return 0
    number = float(value)
    if number != int(number):
        raise InputError(f"{name} must be a whole number of pixels, got {value}")
    return int(number)


def _fmt(value: Any, digits: int) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if value == float("inf") else round(value, digits)
    return value


class WebEditor:
    """One loaded model shared by every request of the page: edits run one at a time (a lock, besides the
    page's queue), each can be cancelled, and results are written as PNGs (with their parameters) into a
    folder that this editor owns."""

    def __init__(self, pipe, scorer=None, model: str = "", results_dir: str | os.PathLike | None = None,
                 keep_requests: int = KEEP_REQUESTS, max_pixels: int = MAX_PIXELS):
        from ..pipelines.schedulers import make_scheduler

        self.pipe, self.scorer, self.model = pipe, scorer, model
        self.max_pixels = max_pixels
        self._make_scheduler = make_scheduler
        self.base_scheduler = pipe.scheduler
        self.results_dir = Path(results_dir) if results_dir else Path(tempfile.mkdtemp(prefix="bld-web-results-"))
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.keep_requests = keep_requests
        self.lock = threading.Lock()
        self._cancel_events: dict[str, threading.Event] = {}
        self._cancel_guard = threading.Lock()

    # -- cancellation -------------------------------------------------------------------------------------
    def _new_cancel_event(self, session: str) -> threading.Event:
        with self._cancel_guard:
            event = self._cancel_events[session] = threading.Event()
            return event

    def cancel(self, session: str) -> bool:
        """Ask the session's running edit to stop after its current step; True when one was running."""
        with self._cancel_guard:
            event = self._cancel_events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def _finish_session(self, session: str, event: threading.Event) -> None:
        with self._cancel_guard:
            if self._cancel_events.get(session) is event:
                del self._cancel_events[session]

    # -- the edit -----------------------------------------------------------------------------------------
    def edit(self, image: PIL.Image.Image | None, mask: Any, prompt: str | None, negative_prompt: str | None = None,
             values: dict[str, Any] | None = None, *, progress: ProgressFn | None = None,
             session: str = "", extra_metadata: dict[str, str] | None = None,
             regions: list[tuple[Any, str]] | None = None) -> EditOutcome:
        """Run one request: the checks (each failure is a message for the page), then the edit on the shared
        model, results best first with their scores and metrics, each saved as a PNG with its parameters.
        regions: more (mask, prompt) rows, each a painted mask (as `mask`) and its own prompt."""
        if progress is None:  # not `progress or ...`: an idle gr.Progress has length 0, so it is falsy
            progress = lambda *args, **kwargs: None  # noqa: E731
        try:
            if image is None:
                raise InputError("upload an image first")
            params = params_from_values(prompt, negative_prompt, values or {})
            if not params.prompt:
                raise InputError("type a prompt: what the painted region should show")
            mask_image, _ = checked_mask(image, mask, params)
            params, region_masks, _ = checked_regions(image, mask_image, regions, params)
            params = with_seed(params)
            if params.guidance_scale is None:
                params = dataclasses.replace(params, guidance_scale=self.pipe.default_guidance_scale)
        except (InputError, ValueError) as exc:
            return EditOutcome(message=error_message(exc))

        cancel = self._new_cancel_event(session)
        try:
            return self._run(image, mask_image, params, progress, cancel, extra_metadata, region_masks)
        except EditCancelled:
            return EditOutcome(message=CANCELLED_MESSAGE, params=params)
        except (InputError, ValueError) as exc:
            return EditOutcome(message=error_message(exc), params=params)
        finally:
            self._finish_session(session, cancel)

    def edit_files(self, image_path: str, mask_path: str, prompt: str, negative_prompt: str = "",
                   parameters: dict[str, Any] | None = None, *, max_mb: float = MAX_UPLOAD_MB) -> EditOutcome:
        """One edit from files, for the HTTP API: the image, the mask (white = change), the prompts and any
        EditParams fields by name (the model's recommended values, then EditParams' defaults, fill the rest).
        Unknown parameter names are refused by name; every other check is the page's."""
        parameters = dict(parameters or {})
        known = {f.name for f in dataclasses.fields(EditParams)} - set(TEXT_FIELDS) - set(NOT_CONTROLS)
        unknown = sorted(set(parameters) - known)
        if unknown:
            return EditOutcome(message=error_message(f"unknown parameter(s) {', '.join(unknown)}; known: "
                                                     f"{', '.join(sorted(known))}"))
        try:
            image = load_source(image_path, max_mb=max_mb, max_pixels=self.max_pixels)
            check_upload(mask_path, "mask", max_mb)
            try:
                mask = check_same_aspect(image, load_mask(mask_path), image_name="image", mask_name="mask")
            except InputError as exc:
                raise _rename_in_message(exc, mask_path) from None
        except InputError as exc:
            return EditOutcome(message=error_message(exc))
        values = {**(model_edit_defaults(self.model) if self.model else {}), **parameters}
        return self.edit(image, mask, prompt, negative_prompt, values)

    def preview(self, image: PIL.Image.Image | None, mask: Any, values: dict[str, Any] | None = None,
                regions: list[tuple[Any, str]] | None = None) -> tuple[PIL.Image.Image | None, str]:
        """What an edit with these values (and region rows) would change, drawn over the image, and the plan in
        a line. Only the masks are computed: it neither waits for the model nor runs it."""
        from ..preview import describe_plan, render_preview

        try:
            if image is None:
                raise InputError("upload an image first")
            params = params_from_values("", None, values or {})
            mask_image, region = checked_mask(image, mask, params)
            params, region_masks, union = checked_regions(image, mask_image, regions, params)
            region = region if union is None else union
            plan = self.pipe.edit_preview(image, mask_image, params, region_masks=region_masks)
        except (InputError, ValueError) as exc:
            return None, error_message(exc)
        return render_preview(image, region, plan), (
            f"**Preview:** {describe_plan(plan, params, image.size)}. Magenta: the mask; cyan: latent cells the "
            f"model redraws beyond it (the result follows their edge); yellow: the box{'es' * (len(plan.crops) > 1)} "
            f"the model works on. With pixel reconstruction only the magenta area changes.")

    def outpaint(self, image: PIL.Image.Image | None, sides: dict[str, Any], prompt: str | None,
                 negative_prompt: str | None = None, values: dict[str, Any] | None = None, *,
                 progress: ProgressFn | None = None, session: str = "") -> EditOutcome:
        """Extend the image by `sides` (left, right, top, bottom, overlap: pixels) and draw the new area to
        follow the prompt; the same checks, queue, cancelling and saving as an edit."""
        from ..outpainting import DEFAULT_OVERLAP, Extension, outpaint_canvas

        try:
            if image is None:
                raise InputError("upload an image first")
            pixels = {side: _whole_pixels(sides.get(side), side) for side in ("left", "right", "top", "bottom")}
            overlap = sides.get("overlap")
            extension = Extension(**pixels, overlap=DEFAULT_OVERLAP if overlap in (None, "") else
                                  _whole_pixels(overlap, "overlap"))
            extension.check(image.size, self.max_pixels)
            canvas, mask = outpaint_canvas(image, extension)
        except (InputError, ValueError) as exc:
            return EditOutcome(message=error_message(str(exc).replace("--", "")))
        return self.edit(canvas, mask, prompt, negative_prompt, {**(values or {}), "invert_mask": False},
                         progress=progress, session=session,
                         extra_metadata={"bld_outpaint": json.dumps(extension.to_dict(), sort_keys=True)})

    def _run(self, image, mask_image, params: EditParams, progress: ProgressFn,
             cancel: threading.Event, extra_metadata: dict[str, str] | None = None,
             region_masks: list | None = None) -> EditOutcome:
        from ..ops.blending import num_skipped_steps
        from ..preview import describe_plan

        progress(0.0, desc="waiting for the model")
        start = time.perf_counter()
        with self.lock:
            if cancel.is_set():
                raise EditCancelled
            self.pipe.scheduler = self._make_scheduler(params.scheduler, self.base_scheduler)
            kept = params.num_inference_steps - num_skipped_steps(params.num_inference_steps, params.skip_fraction)
            plan = (self.pipe.edit_preview(image, mask_image, params, region_masks=region_masks or [])
                    if hasattr(self.pipe, "edit_preview") else None)
            crops = len(plan.crops) if plan is not None else 1
            total = max(1, kept * getattr(self.pipe.scheduler, "order", 1) * crops)
            steps = [0]  # the loop runs once per crop: one bar over all of them

            def on_step(pipe, i, t, state):
                if cancel.is_set():
                    raise EditCancelled
                steps[0] = done = min(steps[0] + 1, total)
                progress((done, total), desc=f"denoising, step {done} of {total}")
                return state

            progress((0, total), desc="encoding")
            try:
                results = run_edit(self.pipe, image, mask_image, params, scorer=self.scorer,
                                   callback_on_step_end=on_step, region_masks=region_masks or [])
            finally:
                self.pipe.scheduler = self.base_scheduler  # the shared pipeline is left as it was found
        progress(1.0, desc="saving")
        folder = self._request_folder()
        outcome = EditOutcome(message="", ok=True, params=params)
        for rank, result in enumerate(results, start=1):
            path = folder / f"bld-{rank}-seed{result.seed}.png"
            save_png_atomic(result.image, path, metadata={**result_metadata(params, result, self.model),
                                                          **(extra_metadata or {})})
            m = result.metrics
            caption = f"#{rank} · seed {result.seed}"  # short enough for a gallery tile; the table has the rest
            if result.score is not None:
                caption += f" · match {result.score:.3f}"
            outcome.gallery.append((str(path), caption))
            outcome.files.append(str(path))
            outcome.table.append([rank, result.seed, _fmt(result.score, 4), _fmt(m.get("background_psnr"), 2),
                                  _fmt(m.get("background_ssim"), 4), _fmt(m.get("edge_delta_e"), 3), path.name])
            outcome.results.append(json_safe({"file": path.name, "rank": rank, "seed": result.seed,
                                              "score": result.score, "metrics": result.metrics,
                                              **({"region_scores": result.region_scores}
                                                 if result.region_scores is not None else {})}))
        seconds = time.perf_counter() - start
        inside = "each region's own prompt inside it, the worst region's" if params.regions else "inside the mask"
        ranked = (f"best first by text match {inside}" if self.scorer is not None and params.rank
                  else "in generation order (not ranked: no CLIP model)" if params.rank
                  else "in generation order (ranking off)")
        outcome.message = (f"**Done:** {len(results)} result{'s' * (len(results) != 1)} in {seconds:.1f} s, {ranked}. "
                           f"Seed {params.seed}: result k used seed + k. Each PNG carries its parameters.")
        if plan is not None:
            outcome.message += f" It {describe_plan(plan, params, image.size)}."
        prompts = " ".join([params.prompt, *(region.prompt for region in params.regions)])
        unknown, known = unknown_words(getattr(self.pipe, "tokenizer", None), prompts)
        if unknown:
            outcome.message += (f"\n\n**Note:** the model does not know {', '.join(repr(w) for w in unknown)}, so "
                                f"it drew something else. It knows: {' '.join(known)}.")
        return outcome

    def _request_folder(self) -> Path:
        folder = self.results_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        old = sorted((p for p in self.results_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for stale in old[:-self.keep_requests]:
            shutil.rmtree(stale, ignore_errors=True)
        return folder


# -- the page ---------------------------------------------------------------------------------------------

def param_control(field: dataclasses.Field, default: Any = None, origin: str = "the model's recommendation"):
    """The Gradio control for one EditParams field, from its metadata: a checkbox for a bool, a dropdown for
    choices, a slider for a ranged number, a text box for an optional number without a default (empty = the
    default: a random seed, the input's size). `default` overrides the field's (the model's recommended value,
    said beside the control with its `origin`)."""
    import gradio as gr

    meta, label = field.metadata, control_label(field)
    value = field.default if default is None else default
    info, kind, elem_id = meta["help"], field_value_type(field), f"param-{field.name}"
    if default is not None and default != field.default:
        own = f" (bld's default: {_shown_value(field.default)})" if field.default is not None else ""
        info += f" Set to {_shown_value(default)}: {origin}{own}."
    if isinstance(field.default, bool):
        return gr.Checkbox(value=value, label=label, info=info, elem_id=elem_id)
    if meta["choices"]:
        return gr.Dropdown(choices=list(meta["choices"]), value=value, label=label, info=info, elem_id=elem_id)
    if meta["low"] is not None:
        info += f" Range [{_shown_value(meta['low'], kind)}, {_shown_value(meta['high'], kind)}]."
    if value is None:
        return gr.Textbox(value="", label=label, info=info, placeholder="empty: the default", elem_id=elem_id)
    step = 1 if kind is int else 0.01 if meta["high"] <= 1 else 0.1
    return gr.Slider(minimum=meta["low"], maximum=meta["high"], step=step, value=value, label=label, info=info,
                     elem_id=elem_id)


def paint_editor(label: str, elem_id: str):
    """An image editor to paint a mask on: full-strength brushes (magenta, white, cyan) and a soft one."""
    import gradio as gr

    return gr.ImageEditor(
        label=label, type="numpy", image_mode="RGBA", sources=(), format="png", transforms=(), layers=False,
        interactive=True, elem_id=elem_id,
        brush=gr.Brush(colors=[("#ff00ff", BRUSH_OPACITY), ("#ffffff", BRUSH_OPACITY), ("#00c0ff", BRUSH_OPACITY),
                               ("#ff00ff", BRUSH_OPACITY / 2)],
                       default_color=("#ff00ff", BRUSH_OPACITY), color_mode="fixed"),
        eraser=gr.Eraser(), buttons=["fullscreen"])


def _shown_value(value: Any, kind: type | None = None) -> str:
    """A value as a person reads it: whole numbers in full (a seed's 4294967295, not 4.29497e+09)."""
    if value is None:
        return "none"
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if kind is int or float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


INTRO = """# bld — Blended Latent Diffusion
1. Upload an image. 2. Paint over the region to change (brush and eraser, with a size control), or upload a
mask (white = change). 3. Type what the region should show and press **Edit**. Under **More regions** you can
add up to three more regions, each painted with its own prompt, edited in the same pass. Results come best first;
each PNG carries its parameters in its metadata. Large photos are edited around the mask at the model's
own size (crop "auto") and come back at full size. To extend the image instead, open **Outpaint**, give the
pixels to add on each side and press **Outpaint**: the prompt then says what the new area should show.
"""


def build_app(pipe, scorer=None, *, model: str = "", results_dir: str | os.PathLike | None = None,
              max_upload_mb: float = MAX_UPLOAD_MB, editor: WebEditor | None = None):
    """The Gradio page over one loaded pipeline (and CLIP scorer, or None for unranked results).

    The edit event has concurrency_limit=1 (requests queue on the one model) and the Stop button cancels it.
    Returns the gr.Blocks; its `.bld_editor` is the WebEditor that runs the requests.
    """
    import gradio as gr
    from gradio import FileData

    from ..loading import TINY_RANDOM
    from ..outpainting import DEFAULT_OVERLAP

    editor = editor or WebEditor(pipe, scorer, model, results_dir)
    fields = {f.name: f for f in dataclasses.fields(EditParams)}
    controls: dict[str, Any] = {}
    recommended = model_edit_defaults(model) if model else {}
    model_defaults = {"guidance_scale": getattr(pipe, "default_guidance_scale", None), **recommended}

    def origin(name: str) -> str:
        return f"recommended for {model_name(model)}" if name in recommended else "this model family's default"

    with gr.Blocks(title="bld — Blended Latent Diffusion", analytics_enabled=False,
                   delete_cache=(3600, 6 * 3600)) as app:
        gr.Markdown(INTRO)
        note = f"Model: `{model or 'given in code'}`."
        if model == TINY_RANDOM:
            note += (" These are tiny random components (no bundled model is installed), so the edited region shows "
                     "noise: start with `bld serve --model FOLDER` for real edits.")
        if scorer is None:
            note += " No CLIP model: results are not ranked."
        gr.Markdown(note, elem_id="model-note")
        source = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    image_file = gr.File(label=f"Image (PNG, JPEG, WebP, TIFF, ...; up to {max_upload_mb:g} MB)",
                                         type="filepath", elem_id="image-file")
                    mask_file = gr.File(label="Mask, optional (white = change)", type="filepath", elem_id="mask-file")
                paint = paint_editor("Paint the region to change", "editor")
                with gr.Accordion("More regions, each with its own prompt", open=False, elem_id="regions"):
                    gr.Markdown("Edit up to three more regions in the same pass, each with its own prompt; the "
                                "prompt above is the first region's. Where regions overlap, the later one wins.")
                    region_rows = []
                    for number in range(2, EXTRA_REGIONS + 2):
                        with gr.Group(visible=False, elem_id=f"region-{number}") as group:
                            region_paint = paint_editor(f"Region {number}: paint it", f"region-{number}-editor")
                            region_prompt = gr.Textbox(label=f"Region {number}: prompt", lines=1,
                                                       placeholder="what this region should show",
                                                       elem_id=f"region-{number}-prompt")
                        region_rows.append((group, region_paint, region_prompt))
                    add_region = gr.Button("Add a region", elem_id="add-region", size="sm")
                    regions_shown = gr.State(0)
                with gr.Row():
                    show_plan = gr.Button("Preview the edited area", elem_id="show-preview", size="sm")
                    reuse = gr.Button("Use the selected result as the input", elem_id="reuse", size="sm")
                preview = gr.Image(label="What the edit will change", type="pil", interactive=False,
                                   elem_id="preview", height=320)
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", placeholder="what the painted region should show",
                                    elem_id="prompt", lines=2)
                negative = gr.Textbox(label="Negative prompt", placeholder="optional: what it should not show",
                                      elem_id="negative-prompt")
                for name in PRIMARY_FIELDS:
                    controls[name] = param_control(fields[name], model_defaults.get(name), origin(name))
                with gr.Accordion("More parameters", open=False):
                    for name, field in fields.items():
                        if name not in PRIMARY_FIELDS and name not in TEXT_FIELDS and name not in NOT_CONTROLS:
                            controls[name] = param_control(field, model_defaults.get(name), origin(name))
                with gr.Accordion("Outpaint: extend the image", open=False):
                    with gr.Row():
                        sides = {side: gr.Number(label=f"{side} (px)", value=0, minimum=0, precision=0,
                                                 elem_id=f"outpaint-{side}")
                                 for side in ("left", "right", "top", "bottom")}
                    sides["overlap"] = gr.Number(label="overlap band (px)", value=DEFAULT_OVERLAP, minimum=0,
                                                 precision=0, elem_id="outpaint-overlap")
                    extend = gr.Button("Outpaint", elem_id="outpaint")
                with gr.Row():
                    run = gr.Button("Edit", variant="primary", elem_id="run")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.Markdown("Upload an image to start.", elem_id="status")
        gallery = gr.Gallery(label="Results, best first", columns=4, height="auto", object_fit="contain",
                             buttons=["download", "fullscreen"], elem_id="gallery")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Scores and metrics", interactive=False,
                             elem_id="results-table")
        downloads = gr.File(label="Download (PNG with its parameters in the metadata)", file_count="multiple",
                            interactive=False, elem_id="downloads")

        def on_image(path):
            if not path:
                return None, None, "Upload an image to start."
            try:
                image = load_source(path, max_mb=max_upload_mb, max_pixels=editor.max_pixels)
            except InputError as exc:
                return None, None, error_message(exc)
            return (image, editor_value(image),
                    f"Loaded {_shown_name(path)!r}, {image.width}x{image.height}. Paint the region to change.")

        def on_mask(image, path):
            if not path:
                return gr.skip(), gr.skip()
            if image is None:
                return gr.skip(), error_message("upload the image before its mask")
            try:
                layer = mask_layer(image, path, max_mb=max_upload_mb)
            except InputError as exc:
                return gr.skip(), error_message(exc)
            return (editor_value(image, layer),
                    f"Mask {_shown_name(path)!r} loaded as paint: change it with the brush and the eraser.")

        def shown(outcome: EditOutcome):
            """The gallery, table, downloads and status of an outcome (a failure keeps the last results)."""
            if not outcome.ok:
                return gr.skip(), gr.skip(), gr.skip(), outcome.message
            return outcome.gallery, outcome.table, outcome.files, outcome.message

        def region_values(data: dict) -> list[tuple[Any, str]]:
            return [(data[row_paint], data[row_prompt]) for _, row_paint, row_prompt in region_rows]

        def on_edit(data: dict, request: gr.Request, progress=gr.Progress()):
            values = {name: data[c] for name, c in controls.items()}
            return shown(editor.edit(data[source], data[paint], data[prompt], data[negative], values,
                                     progress=progress, session=request.session_hash or "",
                                     regions=region_values(data)))

        def on_add_region(count: int):
            count = min(count + 1, EXTRA_REGIONS)
            return (count, *(gr.update(visible=k < count) for k in range(EXTRA_REGIONS)),
                    gr.update(interactive=count < EXTRA_REGIONS))

        def on_new_input(image):
            """Each region's editor shows the new input, unpainted."""
            return tuple(None if image is None else editor_value(image) for _ in region_rows)

        def on_outpaint(data: dict, request: gr.Request, progress=gr.Progress()):
            values = {name: data[c] for name, c in controls.items()}
            return shown(editor.outpaint(data[source], {side: data[c] for side, c in sides.items()}, data[prompt],
                                         data[negative], values, progress=progress,
                                         session=request.session_hash or ""))

        def on_preview(data: dict):
            values = {name: data[c] for name, c in controls.items()}
            picture, message = editor.preview(data[source], data[paint], values, region_values(data))
            return (picture if picture is not None else gr.skip()), message

        def on_select(event: gr.SelectData):
            return event.index

        def on_reuse(index, files):
            if index is None or not files or index >= len(files):
                return gr.skip(), gr.skip(), "Select a result in the gallery first."
            path = files[index] if isinstance(files[index], str) else files[index].get("path", "")
            try:
                image = load_source(path, max_mb=max_upload_mb, max_pixels=editor.max_pixels)
            except InputError as exc:
                return gr.skip(), gr.skip(), error_message(exc)
            return image, editor_value(image), (f"Result #{index + 1} is the input now, {image.width}x{image.height}: "
                                                "paint the next region to change.")

        def on_stop(request: gr.Request):
            running = editor.cancel(request.session_hash or "")
            return CANCELLED_MESSAGE if running else "Nothing was running."

        region_paints = [row_paint for _, row_paint, _ in region_rows]
        region_inputs = {c for _, row_paint, row_prompt in region_rows for c in (row_paint, row_prompt)}
        for event in (image_file.upload(on_image, image_file, [source, paint, status], api_name="load_image"),
                      image_file.clear(on_image, image_file, [source, paint, status], api_visibility="private")):
            event.then(on_new_input, source, region_paints, api_visibility="private")
        mask_file.upload(on_mask, [source, mask_file], [paint, status], api_name="load_mask")
        add_region.click(on_add_region, regions_shown, [regions_shown, *(g for g, _, _ in region_rows), add_region],
                         api_visibility="private")
        inputs = {source, paint, prompt, negative, *controls.values(), *region_inputs}
        results = [gallery, table, downloads, status]  # the progress bar is drawn once, on the gallery
        edit_event = run.click(on_edit, inputs, results, api_name="edit", concurrency_limit=1,
                               concurrency_id="model", show_progress_on=[gallery])
        submit_event = prompt.submit(on_edit, inputs, results, api_visibility="private", concurrency_limit=1,
                                     concurrency_id="model", show_progress_on=[gallery])
        outpaint_event = extend.click(on_outpaint, {source, prompt, negative, *controls.values(), *sides.values()},
                                      results, api_name="outpaint", concurrency_limit=1, concurrency_id="model",
                                      show_progress_on=[gallery])
        show_plan.click(on_preview, {source, paint, *controls.values(), *region_inputs}, [preview, status],
                        api_visibility="private")
        selected = gr.State(None)
        gallery.select(on_select, None, selected, api_visibility="private")
        reuse.click(on_reuse, [selected, downloads], [source, paint, status], api_visibility="private").then(
            on_new_input, source, region_paints, api_visibility="private")
        stop.click(on_stop, None, status, cancels=[edit_event, submit_event, outpaint_event], queue=False,
                   api_visibility="private")

        def edit_files(image: FileData, mask: FileData, prompt: str, negative_prompt: str = "",
                       parameters: dict | None = None) -> tuple[list[FileData], dict]:
            """Edit `image` inside `mask` (white = change) to follow `prompt`, in one call. `parameters`: any
            edit parameters by name, e.g. {"num_images": 2, "seed": 7, "num_inference_steps": 30}. Returns the
            result PNGs best first (each carries its parameters) and a JSON record: per result its file,
            seed, score and metrics, and the parameters used."""
            outcome = editor.edit_files(image["path"], mask["path"], prompt, negative_prompt, parameters,
                                        max_mb=max_upload_mb)
            if not outcome.ok:
                raise gr.Error(outcome.message.removeprefix("**Error:** "))
            record = {"results": outcome.results, "params": outcome.params.to_dict(),
                      "model": model_name(model) if model else "", "message": outcome.message}
            return [FileData(path=path) for path in outcome.files], json_safe(record)

        gr.api(edit_files, api_name="edit_files", concurrency_limit=1, concurrency_id="model")
    app.bld_editor = editor
    app.bld_max_upload_mb = max_upload_mb
    return app


def launch_kwargs(host: str, port: int | None, max_upload_mb: float = MAX_UPLOAD_MB) -> dict[str, Any]:
    """How the page is served: this host only, no share link, no widened file access, local fonts."""
    return dict(server_name=host, server_port=port, share=False, ssr_mode=False, allowed_paths=[],
                max_file_size=int(max_upload_mb * 2**20), show_error=True, inbrowser=False, quiet=True,
                pwa=False, mcp_server=False)


def serve(model: str | None = None, *, host: str = "127.0.0.1", port: int | None = 7860, device: str = "auto",
          dtype: str = "auto", clip_model: str | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
          max_pixels: int = MAX_PIXELS,
          block: bool = True, on_ready: Callable[[str], None] | None = None, compile: bool = False,
          channels_last: bool = False, cpu_offload: bool = False):
    """Load the model once (default: the bundled one) and serve the page until Ctrl-C or SIGTERM. Uploads,
    results and Gradio's cache live in one temporary folder owned by this process (GRADIO_TEMP_DIR), deleted
    on exit; nothing else on disk is served. block=False returns the launched gr.Blocks at once; closing it
    and removing its folder (`app.bld_root`) are then the caller's."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    root = Path(tempfile.mkdtemp(prefix="bld-serve-"))
    os.environ["GRADIO_TEMP_DIR"] = str(root)
    if importlib.util.find_spec("gradio") is None:
        raise InputError("the web app needs gradio: pip install 'gradio>=6,<7'")
    from ..loading import default_model, load_pipeline, load_scorer

    model = model or default_model()
    pipe = load_pipeline(model, device=device, dtype=dtype, scheduler="model", compile=compile,
                         channels_last=channels_last, cpu_offload=cpu_offload)
    pipe.set_progress_bar_config(disable=True)
    scorer = load_scorer(clip_model, model, pipe.device)
    editor = WebEditor(pipe, scorer, model, root / "results", max_pixels=max_pixels)
    app = build_app(pipe, scorer, model=model, max_upload_mb=max_upload_mb, editor=editor)
    app.bld_root = root
    app.queue(default_concurrency_limit=1, max_size=32)
    try:
        app.launch(**launch_kwargs(host, port, max_upload_mb), prevent_thread_lock=True)
        if on_ready is not None:
            on_ready(app.local_url)
        if not block:
            return app
        with _sigterm_as_interrupt():
            app.block_thread()
    finally:
        if block:
            app.close()
            shutil.rmtree(root, ignore_errors=True)
    return app


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the server as Ctrl-C does, so the temporary folder is removed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
