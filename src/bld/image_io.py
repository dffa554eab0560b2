"""Reading the user's image and mask files, and writing result PNGs.

Everything returned is 8-bit: images are mode ``"RGB"`` (0..255 per channel),
masks are mode ``"L"`` (0..255, white = region to edit). Bad user input raises
:class:`InputError`, whose one-line message names the file, says what is wrong
and how to fix it.
"""

from __future__ import annotations

import io
import os
import re
import struct
import tempfile
import warnings
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

__all__ = [
    "MAX_EDIT_PIXELS",
    "MAX_PIXELS",
    "InputError",
    "check_edit_size",
    "check_mask_region",
    "check_same_aspect",
    "encode_png",
    "load_image",
    "load_mask",
    "load_region_masks",
    "read_png_metadata",
    "save_png_atomic",
    "write_png_atomic",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Largest accepted width * height by default: 100 megapixels (a 50 MP camera's 8688x5792 fits). An edit
#: crops around the mask (crop 'auto'), so its cost does not grow with the photo; the front ends take
#: --max-megapixels to change it.
MAX_PIXELS = 100_000_000

#: Largest image edited whole at its own size (crop 'off'); above it the front ends ask for crop 'auto' or a
#: smaller width or height.
MAX_EDIT_PIXELS = 2048 * 2048

#: How the temporary file of an atomic write ends (a crash may leave one behind; its name starts with a dot).
TEMP_SUFFIX = ".png.tmp"

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_GRAY_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class InputError(ValueError):
    """Bad user input. The message is a single line naming the file."""

    def __init__(self, message: str) -> None:
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip())


def _q(path: PathLike) -> str:
    """The path quoted for messages (repr escapes any control characters)."""
    return repr(os.fspath(path))


def _megapixels(n: int, other: int) -> tuple[str, str]:
    """Format two pixel counts so that they read differently when they differ."""
    if max(n, other) < 100_000:
        return f"{n} pixels", f"{other} pixels"
    for digits in range(1, 7):
        a, b = f"{n / 1e6:.{digits}f}", f"{other / 1e6:.{digits}f}"
        if a != b:
            break
    return f"{a} MP", f"{b} MP"


def _too_big(path: PathLike, width: int, height: int, max_pixels: int) -> InputError:
    have, limit = _megapixels(width * height, max_pixels)
    return InputError(
        f"{_q(path)} is {width}x{height} ({have}); the limit is {limit}: downscale it first"
    )


def _open_first_frame(path: PathLike, max_pixels: int) -> Image.Image:
    """Open ``path``, check its size from the header, decode the first frame
    and return it upright (EXIF orientation applied), in its original mode."""
    q = _q(path)
    p = Path(path)
    if not p.exists():
        raise InputError(f"{q} does not exist: check the file name and path")
    if p.is_dir():
        raise InputError(f"{q} is a directory: give the path of an image file")
    try:
        if p.stat().st_size == 0:
            raise InputError(f"cannot read {q}: the file is empty; give a real image file")
    except OSError:
        pass  # let open() report it

    try:
        with warnings.catch_warnings():
            # The size is checked against max_pixels below; Pillow's own
            # global limit only produces noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
    except Image.DecompressionBombError as exc:
        # Raised by Pillow's global limit before the header size is exposed.
        m = re.search(r"\((\d+) pixels\)", str(exc))
        if m and int(m.group(1)) > max_pixels:
            have, limit = _megapixels(int(m.group(1)), max_pixels)
            why = f"({have}); the limit is {limit}"
        else:
            why = "for Pillow's decompression-bomb limit"
        raise InputError(f"{q} is too large {why}: downscale it first") from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"cannot read {q}: not an image file (PNG, JPEG, WebP, TIFF, BMP, ... are accepted)"
        ) from exc
    except PermissionError as exc:
        raise InputError(f"cannot read {q}: permission denied; check the file's permissions") from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise InputError(
            f"cannot read {q}: the file is corrupt or not a supported image ({exc}); "
            "re-export it as PNG or JPEG"
        ) from exc

    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise _too_big(path, width, height, max_pixels)
        try:
            im.seek(0)  # first frame / page of animations and multi-page files
            im.load()
        except Image.DecompressionBombError as exc:
            raise InputError(
                f"{q} is {width}x{height}: over Pillow's decompression-bomb limit; "
                "downscale it first"
            ) from exc
        except Exception as exc:  # decoders raise many types for broken data
            raise InputError(
                f"cannot read {q}: the file is truncated or corrupt ({exc}); "
                "re-export or re-download it"
            ) from exc
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:
            # Unparseable EXIF: keep the stored orientation rather than
            # rejecting an otherwise fine file.
            upright = im.copy()
    return upright


def _wide_gray_to_l(im: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float grayscale image to 8-bit ``"L"``.

    ``I;16*``: 0..65535 -> 0..255. ``I``: kept if max <= 255, else treated as
    16-bit (clipped to 0..65535). ``F``: 0..1 if max <= 1.0, else 0..255;
    clipped, NaN -> 0.
    """
    a = np.asarray(im)
    if im.mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        out = np.clip(np.rint(a), 0, 255)
    else:
        a = a.astype(np.int64)
        if im.mode == "I" and (a.size == 0 or a.max() <= 255):
            out = np.clip(a, 0, 255)
        else:
            out = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
    return Image.fromarray(out.astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a non-alpha image of any mode to ``"RGB"``."""
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_GRAY_MODES:
        return _wide_gray_to_l(im).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        if im.mode != "LAB":
            raise
    # Older Pillow cannot convert LAB directly.
    from PIL import ImageCms

    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    return ImageCms.applyTransform(im, transform)


def _flatten(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Return ``im`` as ``"RGB"``, compositing any transparency over ``background``."""
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")
    elif im.mode == "La":
        im = im.convert("LA")
    if im.mode not in _ALPHA_MODES:
        return _to_rgb(im)
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _describe_mode_error(path: PathLike, im: Image.Image, exc: Exception) -> InputError:
    return InputError(
        f"cannot read {_q(path)}: unsupported color mode {im.mode!r} ({exc}); "
        "convert it to RGB first"
    )


def load_image(path: PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image file as an upright 8-bit ``"RGB"`` image (0..255).

    EXIF orientation is applied, transparency is composited over white, the
    first frame of animations / multi-page files is used, and 16-bit or float
    grayscale is scaled (not clipped) to 8 bit. Files with more than
    ``max_pixels`` pixels are rejected from their header, before decoding.
    Raises :class:`InputError` for missing, unreadable or oversized files.
    """
    im = _open_first_frame(path, max_pixels)
    try:
        return _flatten(im, (255, 255, 255))
    except (ValueError, OSError) as exc:
        raise _describe_mode_error(path, im, exc) from exc


def load_mask(path: PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read a mask file as an upright 8-bit ``"L"`` image (0..255, white = edit).

    Handled like :func:`load_image`, except that transparency is composited
    over black (a white stroke on a transparent layer becomes the mask) and
    color is reduced to luminance (ITU-R 601-2).
    """
    im = _open_first_frame(path, max_pixels)
    try:
        if im.mode in _WIDE_GRAY_MODES:
            return _wide_gray_to_l(im)
        if im.mode == "L" and "transparency" not in im.info:
            return im
        return _flatten(im, (0, 0, 0)).convert("L")
    except (ValueError, OSError) as exc:
        raise _describe_mode_error(path, im, exc) from exc


def check_same_aspect(
    image: Image.Image,
    mask: Image.Image,
    *,
    image_name: str = "image",
    mask_name: str = "mask",
) -> Image.Image:
    """Return ``mask`` matched to ``image``'s size.

    Equal sizes: ``mask`` is returned unchanged. Aspect ratios within 1%
    (relative): ``mask`` resized to the image size with NEAREST (keeps hard
    edges). Otherwise :class:`InputError` naming both sizes.
    """
    if mask.size == image.size:
        return mask
    iw, ih = image.size
    mw, mh = mask.size
    if min(iw, ih, mw, mh) > 0:
        image_aspect, mask_aspect = iw / ih, mw / mh
        if abs(mask_aspect - image_aspect) <= 0.01 * image_aspect:
            return mask.resize(image.size, Image.Resampling.NEAREST)
    raise InputError(
        f"mask {mask_name!r} is {mw}x{mh} but image {image_name!r} is {iw}x{ih}: "
        "the mask must have the image's size (or at least its aspect ratio)"
    )


def check_mask_region(mask: Image.Image, invert: bool, soft: bool = False) -> None:
    """The mask must leave something to edit and something to keep (soft: any gray above black edits)."""
    gray = np.asarray(mask.convert("L"))
    if soft:  # inverted, every pixel short of white edits
        region = gray < 255 if invert else gray > 0
    else:
        region = gray < 128 if invert else gray >= 128
    inverted = " (the mask was inverted)" if invert else ""
    if not region.any():
        raise InputError(f"mask is empty: nothing to edit; paint the region to change in white{inverted}")
    if region.all():
        raise InputError(f"mask covers the whole image: nothing would be kept; paint only the region to change"
                         f"{inverted}")


def load_region_masks(paths: list[PathLike], image: Image.Image, *, invert: bool = False, soft: bool = False,
                      max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """The masks of an edit's further regions, each read and checked as the main mask is (a file, the image's
    aspect ratio, something to edit), every error naming its file."""
    if paths and invert:
        raise InputError("--invert-mask does not apply to several regions: paint each region to change")
    masks = []
    for path in paths:
        mask = check_same_aspect(image, load_mask(path, max_pixels=max_pixels), mask_name=str(path))
        try:
            check_mask_region(mask, False, soft)
        except InputError as exc:
            raise InputError(f"region mask {str(path)!r}: {exc}") from None
        masks.append(mask)
    return masks


def check_edit_size(size: tuple[int, int], crop: str, width: int | None, height: int | None) -> None:
    """Only a whole-image edit at the image's own size (crop 'off', no width or height) grows with the photo."""
    w, h = size
    if crop == "off" and width is None and height is None and w * h > MAX_EDIT_PIXELS:
        raise InputError(f"the image is {w}x{h}; editing above {MAX_EDIT_PIXELS // 2**20} MP whole at full "
                         f"size needs too much memory: use --crop auto (edit around the mask), or --width (or "
                         f"--height) to edit at a smaller size; the result is resized back")


def _file_mode() -> int:
    """Permission bits for a new file under the current umask (no umask change)."""
    umask = 0o022
    with suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    return 0o666 & ~umask


def _exists_error(path: PathLike) -> InputError:
    return InputError(
        f"{_q(path)} already exists: choose another output name or allow overwriting"
    )


def encode_png(image: Image.Image, metadata: Mapping[str, str] | None = None) -> bytes:
    """``image`` as PNG bytes, each ``metadata`` item a UTF-8 iTXt chunk."""
    info = PngInfo()
    for key, value in (metadata or {}).items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise TypeError(f"PNG metadata keys and values must be str, got {key!r}: {value!r}")
        if not 1 <= len(key) <= 79 or not key.isprintable() or not key.isascii():
            raise ValueError(f"invalid PNG metadata key {key!r}: use 1-79 printable ASCII characters")
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png_atomic(
    image: Image.Image,
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` as a PNG at ``path`` atomically and return the path.

    Each ``metadata`` item becomes a UTF-8 iTXt chunk. See :func:`write_png_atomic`.
    """
    if Path(path).suffix.lower() != ".png":
        raise InputError(f"cannot save {_q(path)}: only PNG output is supported; use a name ending in .png")
    return write_png_atomic(encode_png(image, metadata), path, overwrite=overwrite)


def write_png_atomic(data: bytes, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write PNG bytes (:func:`encode_png`) at ``path`` atomically and return the path.

    The data is written to a temporary file in the same directory (named
    ``.NAME.*.png.tmp``), fsynced and then moved into place, so readers never
    see a partial file. Without ``overwrite`` an existing file is never
    replaced, even if it appears while writing. On failure the temporary file
    is removed. No directories are created.
    """
    target = Path(path)
    q = _q(path)
    if target.suffix.lower() != ".png":
        raise InputError(f"cannot save {q}: only PNG output is supported; use a name ending in .png")
    parent = target.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise InputError(f"cannot save {q}: directory {_q(parent)} {what}; create it first")
    if target.is_dir():
        raise InputError(f"cannot save {q}: it is a directory; give a file name ending in .png")
    if not overwrite and os.path.lexists(target):
        raise _exists_error(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    except PermissionError as exc:
        raise InputError(
            f"cannot save {q}: no permission to write in {_q(parent)}; choose another directory"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        if overwrite:
            os.replace(tmp, target)
        else:
            _move_no_clobber(tmp, target, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)
    return target


def _move_no_clobber(tmp: str, target: Path, path: PathLike) -> None:
    """Move ``tmp`` to ``target`` unless ``target`` exists (atomically where
    the file system has hard links)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _exists_error(path) from None
    except (OSError, NotImplementedError):
        # No hard links here (e.g. FAT, some network shares): best effort.
        if os.path.lexists(target):
            raise _exists_error(path) from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (POSIX; a no-op where unsupported)."""
    with suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_png_metadata(path: PathLike) -> dict[str, str]:
    """Return the text chunks (tEXt, zTXt, iTXt) of the PNG at ``path``."""
    q = _q(path)
    if not Path(path).is_file():
        raise InputError(f"{q} does not exist or is not a file: check the path")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise InputError(f"cannot read metadata of {q}: it is not a PNG file")
            return {str(k): str(v) for k, v in im.text.items()}
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise InputError(f"cannot read {q}: the file is corrupt or not an image ({exc})") from exc
