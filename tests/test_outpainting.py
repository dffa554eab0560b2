"""Outpainting: canvas and mask geometry, kept pixels, the pipeline helper and the CLI command."""

import json

import numpy as np
import pytest
from conftest import make_image

from bld.apps.cli import main
from bld.image_io import InputError, read_png_metadata
from bld.outpainting import Extension, outpaint, outpaint_canvas, prefill

FAST = dict(num_inference_steps=4, guidance_scale=3.0)


@pytest.mark.parametrize("fill", ["edge", "telea"])
def test_canvas_holds_the_input_and_the_mask_is_the_new_area_plus_the_band(fill):
    image = make_image((64, 48))
    extension = Extension(left=10, right=0, top=6, bottom=20, overlap=4, fill=fill)
    canvas, mask = outpaint_canvas(image, extension)
    assert canvas.size == (74, 74) == extension.canvas_size(image.size)
    c, m = np.asarray(canvas), np.asarray(mask) > 0
    assert np.array_equal(c[6:54, 10:74], np.asarray(image))  # the input, untouched, where it was
    expected = np.ones((74, 74), bool)
    expected[6 + 4:54 - 4, 10 + 4:74] = False  # kept: the input less the band on its extended sides
    assert np.array_equal(m, expected)


def test_prefill_continues_the_border_colors():
    canvas = np.zeros((40, 60, 3), np.uint8)
    canvas[:, :30] = (200, 40, 40)  # known: a red left half
    known = np.zeros((40, 60), bool)
    known[:, :30] = True
    for method in ("edge", "telea"):
        filled = prefill(np.where(known[..., None], canvas, 0).astype(np.uint8), known, method)
        assert np.array_equal(filled[known], canvas[known])
        assert np.abs(filled[~known].astype(int) - (200, 40, 40)).max() <= 12, method


def test_outpaint_keeps_every_original_pixel_outside_the_band(sd_pipe):
    import torch

    image = make_image((64, 64))
    out = outpaint(sd_pipe, image, "a red star", right=32, bottom=16, overlap=8,
                   generator=torch.Generator().manual_seed(0), **FAST)
    result = np.asarray(out.images[0])
    assert result.shape == (80, 96, 3)
    assert np.array_equal(result[:64 - 8, :64 - 8], np.asarray(image)[:56, :56])
    assert result[64:, :].std() > 0  # something was drawn


@pytest.mark.parametrize("extension,message", [
    (Extension(), "nothing to outpaint"),
    (Extension(left=-3), "--left -3: extensions are pixels to add"),
    (Extension(right=2 * 10**6), "the outpainted canvas would be"),
    (Extension(right=4, overlap=-1), "--overlap -1"),
])
def test_bad_extensions_are_one_line_errors(extension, message):
    with pytest.raises(InputError, match=message):
        extension.check((64, 64))


def test_cli_outpaint_writes_the_extended_result_with_its_record(tmp_path, capsys):
    source = tmp_path / "in.png"
    make_image((64, 48)).save(source)
    out = tmp_path / "out.png"
    code = main(["outpaint", str(source), "a red star", "-o", str(out), "--right", "24", "--top", "8",
                 "--model", "tiny-random", "--steps", "3", "--num-results", "1", "--seed", "1", "--no-rank", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["size"] == [88, 56] and summary["outpaint"]["right"] == 24
    chunks = read_png_metadata(out)
    assert json.loads(chunks["bld_outpaint"])["top"] == 8 and "bld" in chunks


@pytest.mark.parametrize("flags,pattern", [
    ([], "nothing to outpaint"),
    (["--left", "-5"], "--left -5"),
    (["--right", "100000", "--max-megapixels", "1"], "the outpainted canvas would be"),
])
def test_cli_outpaint_bad_input(tmp_path, capsys, flags, pattern):
    source = tmp_path / "in.png"
    make_image((64, 48)).save(source)
    out = tmp_path / "out.png"
    code = main(["outpaint", str(source), "a red star", "-o", str(out), "--model", "tiny-random", *flags])
    err = capsys.readouterr().err
    assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_web_outpaint(sd_pipe, tmp_path):
    from bld.apps.webapp import WebEditor

    editor = WebEditor(sd_pipe, results_dir=tmp_path)
    image = make_image((64, 48))
    values = {"num_inference_steps": 3, "num_images": 1, "seed": 2, "rank": False}
    outcome = editor.outpaint(image, {"left": 16, "right": 0, "top": 0, "bottom": 8.0}, "a red star",
                              values=values)
    assert outcome.ok, outcome.message
    (path,) = outcome.files
    chunks = read_png_metadata(path)
    assert json.loads(chunks["bld_outpaint"])["left"] == 16
    from PIL import Image

    assert Image.open(path).size == (80, 56)
    bad = editor.outpaint(image, {"left": 0}, "a red star", values=values)
    assert not bad.ok and "nothing to outpaint" in bad.message
    half = editor.outpaint(image, {"left": 2.5}, "a red star", values=values)
    assert "whole number of pixels" in half.message
