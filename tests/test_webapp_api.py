"""The web app's HTTP API, called over HTTP as an automation script would: one call with the image, the mask,
the prompts and named parameters; the result PNGs and their metrics come back."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
from conftest import free_port, make_image, make_mask

from bld.image_io import read_png_metadata

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def client():
    from bld.apps.webapp import serve

    port = free_port()
    app = serve("tiny-random", port=port, device="cpu", block=False)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()
        shutil.rmtree(app.bld_root, ignore_errors=True)


@pytest.fixture
def files(tmp_path):
    make_image().save(tmp_path / "image.png")
    make_mask().save(tmp_path / "mask.png")
    return tmp_path


def test_the_endpoint_has_named_parameters(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/edit_files"]
    assert [p["parameter_name"] for p in info["parameters"]] == [
        "image", "mask", "prompt", "negative_prompt", "parameters"]


def test_one_call_edits_and_returns_pngs_with_their_metrics(client, files):
    handle = gradio_client.handle_file
    paths, record = client.predict(handle(str(files / "image.png")), handle(str(files / "mask.png")), "a red star",
                                   "", {"num_images": 2, "seed": 7, "num_inference_steps": 3},
                                   api_name="/edit_files")
    assert len(paths) == 2 and [r["seed"] for r in sorted(record["results"], key=lambda r: r["seed"])] == [7, 8]
    assert record["params"]["num_inference_steps"] == 3 and record["params"]["prompt"] == "a red star"
    assert record["model"] == "tiny-random"
    source = np.asarray(make_image())
    outside = np.asarray(make_mask()) < 128
    for path, result in zip(paths, record["results"]):
        image = np.asarray(PIL.Image.open(path).convert("RGB"))
        assert np.array_equal(image[outside], source[outside])  # pixel reconstruction: the input outside
        saved = json.loads(read_png_metadata(path)["bld"])
        assert saved["params"]["seed"] == result["seed"] and "background_psnr" in result["metrics"]


def test_bad_requests_get_one_line_errors(client, files):
    handle = gradio_client.handle_file
    PIL.Image.new("L", (64, 64)).save(files / "empty.png")
    with pytest.raises(Exception, match="mask is empty"):
        client.predict(handle(str(files / "image.png")), handle(str(files / "empty.png")), "a red star", "", {},
                       api_name="/edit_files")
    with pytest.raises(Exception, match="unknown parameter.*steps"):
        client.predict(handle(str(files / "image.png")), handle(str(files / "mask.png")), "a red star", "",
                       {"steps": 3}, api_name="/edit_files")
