"""Tests for bld.image_io: every odd input is built in tmp_path."""

from __future__ import annotations

import errno
import io
import os
import stat

import numpy as np
import pytest
from PIL import Image, ImageFile

from bld import image_io
from bld.image_io import (
    MAX_PIXELS,
    InputError,
    check_same_aspect,
    load_image,
    load_mask,
    read_png_metadata,
    save_png_atomic,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def px(im: Image.Image, xy: tuple[int, int]):
    return np.asarray(im)[xy[1], xy[0]].tolist()


def assert_close(actual, expected, tol=12):
    assert np.allclose(np.asarray(actual, float), np.asarray(expected, float), atol=tol), (
        actual,
        expected,
    )


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "\r" not in message
    return message


# --------------------------------------------------------------------- bad files


def test_non_image_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not an image\n")
    with pytest.raises(InputError, match=r"cannot read '.*notes\.txt': not an image file") as e:
        load_image(path)
    assert "PNG, JPEG" in one_line(e)
    with pytest.raises(InputError, match="not an image file"):
        load_mask(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"'.*empty\.png'.*empty") as e:
        load_image(path)
    one_line(e)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"'.*cut\.png'.*truncated or corrupt") as e:
        load_image(path)
    one_line(e)
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_mask(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InputError, match=r"'.*nope\.png' does not exist") as e:
        load_image(path)
    one_line(e)
    with pytest.raises(InputError, match="does not exist"):
        load_mask(str(path))


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="is a directory"):
        load_mask(tmp_path)


def test_message_with_newline_in_name_stays_one_line(tmp_path):
    path = tmp_path / "bad\nname.txt"
    path.write_text("x")
    with pytest.raises(InputError, match=r"bad\\nname\.txt") as e:
        load_image(path)
    one_line(e)


def test_input_error_is_value_error_and_flattens_newlines():
    err = InputError("first line\n  second line")
    assert isinstance(err, ValueError)
    assert str(err) == "first line second line"


# ----------------------------------------------------------------- orientation


def _rotated_jpeg(path, fill, corner_color, mode="RGB"):
    """40 wide x 20 high, 10x10 colored block at the stored top-left corner,
    tagged EXIF Orientation=6 (display = stored rotated 90 degrees clockwise)."""
    img = Image.new(mode, (40, 20), fill)
    img.paste(corner_color, (0, 0, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, "JPEG", exif=exif, quality=95)


def test_exif_rotated_jpeg_image(tmp_path):
    path = tmp_path / "phone.jpg"
    _rotated_jpeg(path, BLUE, RED)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == (20, 40)
    # Rotating 90 degrees clockwise moves the top-left corner to the top-right.
    assert_close(px(out, (15, 4)), RED, tol=30)
    assert_close(px(out, (4, 4)), BLUE, tol=30)
    assert_close(px(out, (15, 35)), BLUE, tol=30)


def test_exif_rotated_jpeg_mask(tmp_path):
    path = tmp_path / "phone_mask.jpg"
    _rotated_jpeg(path, 0, 255, mode="L")
    out = load_mask(path)
    assert out.mode == "L"
    assert out.size == (20, 40)
    assert px(out, (15, 4)) > 220
    assert px(out, (4, 4)) < 30


# ----------------------------------------------------------------- transparency


def _rgba_stroke(path):
    """Transparent (white, alpha 0) layer with an opaque white square and a
    half-transparent red square."""
    im = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    im.paste((255, 255, 255, 255), (0, 0, 4, 4))
    im.paste((255, 0, 0, 128), (4, 4, 8, 8))
    im.save(path)


def test_rgba_image_over_white(tmp_path):
    path = tmp_path / "rgba.png"
    _rgba_stroke(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert px(out, (6, 1)) == [255, 255, 255]
    assert px(out, (1, 1)) == [255, 255, 255]
    assert_close(px(out, (6, 6)), [255, 127, 127], tol=2)


def test_rgba_mask_over_black(tmp_path):
    path = tmp_path / "stroke.png"
    _rgba_stroke(path)
    out = load_mask(path)
    assert out.mode == "L"
    assert px(out, (1, 1)) == 255  # the stroke
    assert px(out, (6, 1)) == 0  # transparent (though its colour is white)
    # half-transparent red over black: luminance of (128, 0, 0) ~ 38
    assert_close(px(out, (6, 6)), 0.299 * 128, tol=2)


def test_la_mask_over_black(tmp_path):
    path = tmp_path / "la.png"
    im = Image.new("LA", (4, 4), (255, 0))
    im.paste((255, 255), (0, 0, 2, 4))
    im.save(path)
    out = load_mask(path)
    assert px(out, (0, 0)) == 255 and px(out, (3, 0)) == 0


def test_palette_png_with_transparency(tmp_path):
    path = tmp_path / "pal.png"
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 6))  # 0 green, 1 red
    im.paste(1, (0, 0, 2, 4))
    im.save(path, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    image = load_image(path)
    assert image.mode == "RGB"
    assert px(image, (0, 0)) == [255, 0, 0]
    assert px(image, (3, 0)) == [255, 255, 255]  # transparent green -> white
    mask = load_mask(path)
    assert mask.mode == "L"
    assert px(mask, (3, 0)) == 0  # transparent -> black
    assert_close(px(mask, (0, 0)), 0.299 * 255, tol=2)


def test_palette_png_without_transparency(tmp_path):
    path = tmp_path / "pal.png"
    Image.new("RGB", (4, 4), RED).quantize(4).save(path)
    assert px(load_image(path), (0, 0)) == list(RED)


def test_grayscale_and_bilevel_become_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (3, 3), 77).save(gray)
    assert px(load_image(gray), (1, 1)) == [77, 77, 77]
    assert px(load_mask(gray), (1, 1)) == 77
    bilevel = tmp_path / "one.png"
    Image.new("1", (3, 3), 1).save(bilevel)
    assert px(load_image(bilevel), (1, 1)) == [255, 255, 255]
    assert px(load_mask(bilevel), (1, 1)) == 255


def test_rgb_mask_uses_luminance(tmp_path):
    path = tmp_path / "rgb_mask.png"
    im = Image.new("RGB", (2, 1), (255, 255, 255))
    im.putpixel((1, 0), (0, 255, 0))
    im.save(path)
    out = load_mask(path)
    assert out.mode == "L"
    assert px(out, (0, 0)) == 255
    assert_close(px(out, (1, 0)), 0.587 * 255, tol=2)


# ------------------------------------------------------------- wide grayscale


def test_16bit_grayscale_png(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255, 4]
    assert np.asarray(image)[0, 2].tolist() == [255, 255, 255]
    mask = load_mask(path)
    assert mask.mode == "L"
    assert np.asarray(mask)[0].tolist() == [0, 128, 255, 4]


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0, 100, 255], [0, 100, 255]), ([0, 32768, 65535], [0, 128, 255]), ([-5, 70000, 0], [0, 255, 0])],
)
def test_32bit_int_tiff(tmp_path, values, expected):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.array([values], dtype=np.int32)).save(path)
    with Image.open(path) as check:
        assert check.mode == "I"
    assert np.asarray(load_mask(path))[0].tolist() == expected
    assert np.asarray(load_image(path))[0, :, 1].tolist() == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.5, 1.0, -0.2], [0, 128, 255, 0]), ([0.0, 100.0, 300.0, 2.0], [0, 100, 255, 2])],
)
def test_float_tiff(tmp_path, values, expected):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(path)
    with Image.open(path) as check:
        assert check.mode == "F"
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :, 2].tolist() == expected
    mask = load_mask(path)
    assert mask.mode == "L"
    assert np.asarray(mask)[0].tolist() == expected


# ---------------------------------------------------------------- other modes


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # red
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB"
    assert_close(px(image, (8, 8)), RED, tol=10)
    assert_close(px(load_mask(path), (8, 8)), 0.299 * 255, tol=10)


def test_cmyk_tiff(tmp_path):
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (4, 4), (255, 255, 0, 0)).save(path)  # blue
    assert px(load_image(path), (1, 1)) == list(BLUE)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("YCbCr", (76, 85, 255), RED), ("LAB", (255, 128, 128), (255, 255, 255))],
)
def test_other_color_mode_tiffs(tmp_path, mode, value, expected):
    path = tmp_path / "odd.tif"
    Image.new(mode, (4, 4), value).save(path)
    with Image.open(path) as check:
        if check.mode != mode:  # seen in a fresh CI venv: this TIFF writer stored YCbCr as RGB
            pytest.skip(f"Pillow wrote a {check.mode} TIFF for {mode}: nothing {mode}-specific to read")
    assert_close(px(load_image(path), (1, 1)), expected, tol=3)


def test_hsv_conversion(monkeypatch):
    # No common file format stores HSV, so feed the decoded image directly.
    hsv = Image.new("HSV", (2, 2), (0, 255, 255))
    monkeypatch.setattr(image_io, "_open_first_frame", lambda path, max_pixels: hsv)
    assert px(load_image("hsv"), (0, 0)) == list(RED)


def test_multiframe_gif_uses_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (6, 6), c) for c in (RED, (0, 255, 0), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3
    assert px(load_image(path), (3, 3)) == list(RED)


def test_multipage_tiff_uses_first_page(tmp_path):
    path = tmp_path / "pages.tif"
    pages = [Image.new("L", (5, 5), v) for v in (200, 10)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert px(load_mask(path), (2, 2)) == 200


# --------------------------------------------------------------------- size


def test_too_many_pixels_small_limit_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20), RED).save(path)

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(
        InputError,
        match=r"'.*big\.png' is 20x20 \(400 pixels\); the limit is 100 pixels: downscale it first",
    ) as e:
        load_image(path, max_pixels=100)
    one_line(e)
    with pytest.raises(InputError, match="is 20x20"):
        load_mask(path, max_pixels=399)


def test_at_the_limit_is_fine(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (20, 20), RED).save(path)
    assert load_image(path, max_pixels=400).size == (20, 20)


def test_48_megapixel_photo_is_accepted_and_100_megapixels_is_the_default_limit(tmp_path):
    assert MAX_PIXELS == 100_000_000
    path = tmp_path / "camera.png"
    Image.new("1", (8000, 6000)).save(path)
    assert load_image(path).size == (8000, 6000)
    path = tmp_path / "huge.png"
    Image.new("1", (10200, 10000)).save(path)
    with pytest.raises(
        InputError,
        match=r"'.*huge\.png' is 10200x10000 \(102\.0 MP\); the limit is 100\.0 MP: downscale it first",
    ):
        load_image(path)
    with pytest.raises(InputError, match="10200x10000"):
        load_mask(path)


def test_pillow_decompression_bomb_becomes_input_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow errors above 2x this
    with pytest.raises(
        InputError,
        match=r"'.*bomb\.png' is too large \(10000 pixels\); the limit is 9000 pixels: downscale",
    ):
        load_image(path, max_pixels=9000)
    with pytest.raises(InputError, match="too large for Pillow's decompression-bomb limit"):
        load_mask(path, max_pixels=10**9)


# -------------------------------------------------------------- mask vs image


def test_check_same_aspect_same_size_returns_mask_unchanged():
    image = Image.new("RGB", (64, 32))
    mask = Image.new("L", (64, 32))
    assert check_same_aspect(image, mask) is mask


def test_check_same_aspect_resizes_with_nearest():
    image = Image.new("RGB", (512, 512))
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (0, 0, 128, 256))  # left half white
    out = check_same_aspect(image, mask)
    assert out.size == (512, 512) and out.mode == "L"
    values = set(np.unique(np.asarray(out)).tolist())
    assert values == {0, 255}  # no interpolated grays
    assert px(out, (255, 10)) == 255 and px(out, (256, 10)) == 0


def test_check_same_aspect_tolerates_one_percent():
    image = Image.new("RGB", (1000, 500))
    out = check_same_aspect(image, Image.new("L", (503, 250)))
    assert out.size == (1000, 500)


def test_check_same_aspect_rejects_different_aspect():
    image = Image.new("RGB", (512, 512))
    mask = Image.new("L", (300, 200))
    with pytest.raises(InputError) as e:
        check_same_aspect(image, mask, image_name="a.png", mask_name="m.png")
    assert one_line(e) == (
        "mask 'm.png' is 300x200 but image 'a.png' is 512x512: "
        "the mask must have the image's size (or at least its aspect ratio)"
    )
    with pytest.raises(InputError, match="mask 'mask' is 520x500 but image 'image' is 512x512"):
        check_same_aspect(image, Image.new("L", (520, 500)))


# ------------------------------------------------------------------- saving


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_save_png_atomic_roundtrip_with_metadata(tmp_path):
    image = Image.new("RGB", (8, 4), RED)
    meta = {"prompt": "ein Hund – 犬 🐕 on a sofa", "seed": "42"}
    out = save_png_atomic(image, tmp_path / "out.png", metadata=meta)
    assert out == tmp_path / "out.png"
    with Image.open(out) as back:
        assert back.format == "PNG" and back.size == (8, 4)
        assert px(back.convert("RGB"), (0, 0)) == list(RED)
    assert read_png_metadata(out) == meta
    assert _leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_save_png_atomic_accepts_str_and_upper_case_suffix(tmp_path):
    out = save_png_atomic(Image.new("L", (2, 2)), str(tmp_path / "OUT.PNG"))
    assert out.is_file()
    assert read_png_metadata(out) == {}


def test_save_png_atomic_refuses_existing_file(tmp_path):
    target = tmp_path / "out.png"
    save_png_atomic(Image.new("RGB", (4, 4), RED), target)
    before = target.read_bytes()
    with pytest.raises(InputError, match=r"'.*out\.png' already exists") as e:
        save_png_atomic(Image.new("RGB", (4, 4), BLUE), target)
    one_line(e)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_save_png_atomic_overwrite(tmp_path):
    target = tmp_path / "out.png"
    save_png_atomic(Image.new("RGB", (4, 4), RED), target, metadata={"v": "1"})
    save_png_atomic(Image.new("RGB", (4, 4), BLUE), target, metadata={"v": "2"}, overwrite=True)
    assert px(load_image(target), (0, 0)) == list(BLUE)
    assert read_png_metadata(target) == {"v": "2"}
    assert _leftovers(tmp_path) == []


def test_save_png_atomic_refuses_jpg_suffix(tmp_path):
    with pytest.raises(InputError, match=r"'.*out\.jpg'.*\.png"):
        save_png_atomic(Image.new("RGB", (4, 4)), tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []


def test_save_png_atomic_refuses_missing_parent(tmp_path):
    with pytest.raises(InputError, match=r"directory '.*missing' does not exist"):
        save_png_atomic(Image.new("RGB", (4, 4)), tmp_path / "missing" / "out.png")
    assert not (tmp_path / "missing").exists()


def test_save_png_atomic_cleans_up_when_encoding_fails(tmp_path, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_png_atomic(Image.new("RGB", (4, 4)), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_save_png_atomic_cleans_up_when_rename_fails(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="I/O error"):
        save_png_atomic(Image.new("RGB", (4, 4)), tmp_path / "out.png", overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_save_png_atomic_without_hard_links_falls_back(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = save_png_atomic(Image.new("RGB", (4, 4), RED), tmp_path / "out.png")
    assert px(load_image(target), (0, 0)) == list(RED)
    assert _leftovers(tmp_path) == []
    with pytest.raises(InputError, match="already exists"):
        save_png_atomic(Image.new("RGB", (4, 4)), target)


def test_save_png_atomic_never_replaces_file_that_appears_while_writing(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    real_save = Image.Image.save

    def racing_save(self, fp, *args, **kwargs):
        target.write_bytes(b"someone else's file")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", racing_save)
    with pytest.raises(InputError, match="already exists"):
        save_png_atomic(Image.new("RGB", (4, 4)), target)
    assert target.read_bytes() == b"someone else's file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_read_png_metadata_rejects_non_png(tmp_path):
    path = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(InputError, match="not a PNG"):
        read_png_metadata(path)
    with pytest.raises(InputError, match="does not exist"):
        read_png_metadata(tmp_path / "missing.png")
