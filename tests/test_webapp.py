"""The web app's handlers on tiny components, without a browser (tests/test_webapp_browser.py drives the page).

Edits change only the painted region, results come best first as PNGs carrying their parameters, the page's
controls are generated from EditParams, bad input gets a message for the page, requests run one at a time on
the shared model, and a running request can be cancelled.
"""

import dataclasses
import json
import re
import threading
import time

import numpy as np
import PIL.Image
import pytest
from conftest import make_image, make_mask

from bld.apps import webapp
from bld.apps.webapp import (
    WebEditor,
    build_app,
    editor_value,
    load_source,
    mask_from_editor,
    mask_layer,
    params_from_values,
)
from bld.editing import METADATA_KEY, params_from_metadata
from bld.image_io import InputError, read_png_metadata
from bld.loading import TINY_RANDOM, load_pipeline
from bld.params import EditParams
from bld.testing.tiny_clip import tiny_clip

FAST = {"num_inference_steps": 4.0, "num_images": 2.0, "seed": "5"}  # as the page sends them: sliders give floats


@pytest.fixture(scope="module")
def pipe():
    """Loaded as `bld serve --model tiny-random` loads it (its own scheduler kept as the base)."""
    pipe = load_pipeline(TINY_RANDOM, scheduler="model")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def editor(pipe, scorer, tmp_path):
    return WebEditor(pipe, scorer, model=TINY_RANDOM, results_dir=tmp_path / "results")


def painted_layer(mask: PIL.Image.Image, alpha: int = 153) -> np.ndarray:
    """What the page's editor sends for strokes over `mask`'s white region: RGBA, magenta at 60% opacity."""
    inside = np.asarray(mask) >= 128
    layer = np.zeros((*inside.shape, 4), np.uint8)
    layer[inside] = (255, 0, 255, alpha)
    return layer


def test_edit_changes_only_the_painted_region(editor, scorer):
    image, mask = make_image(), make_mask()
    layer = painted_layer(mask)
    layer[0:2, 0:2] = (255, 0, 255, 10)  # the faint fringe an eraser leaves: not part of the mask
    progress = []
    outcome = editor.edit(image, editor_value(image, layer), " a red apple ", "", FAST,
                          progress=lambda *args, **kwargs: progress.append(args[0]))
    assert outcome.ok, outcome.message
    assert "Done" in outcome.message and "best first" in outcome.message
    assert "It edits the whole 64x64 image, drawn at 64x64; the model's native size is 64 px" in outcome.message
    assert "does not know" not in outcome.message  # tiny random's character-level tokenizer has no words to name
    assert len(outcome.gallery) == len(outcome.files) == len(outcome.table) == 2
    inside = np.asarray(mask) >= 128
    source = np.asarray(image).astype(int)
    seeds = []
    for rank, ((path, caption), row) in enumerate(zip(outcome.gallery, outcome.table), start=1):
        assert path.startswith(str(editor.results_dir)) and path.endswith(".png")
        result = np.asarray(PIL.Image.open(path).convert("RGB")).astype(int)
        assert result.shape == source.shape
        assert np.array_equal(result[~inside], source[~inside])  # pixel reconstruction: exact outside
        assert np.abs(result[inside] - source[inside]).mean() > 10  # the tiny model paints noise inside
        text = read_png_metadata(path)
        record = json.loads(text[METADATA_KEY])
        params = params_from_metadata(text)
        assert params.prompt == "a red apple" and params.num_inference_steps == 4 and params.num_images == 1
        assert params.guidance_scale == editor.pipe.default_guidance_scale  # the model's default was filled in
        assert record["model"] == TINY_RANDOM and record["batch_seed"] == 5
        assert row[0] == rank and row[1] == params.seed and f"seed {params.seed}" in caption
        seeds.append(params.seed)
    assert sorted(seeds) == [5, 6]
    scores = [row[2] for row in outcome.table]
    assert scores == sorted(scores, reverse=True)  # best first
    assert progress[-2] == (3, 3) and (1, 3) in progress  # 4 steps, 1 skipped: 3 denoising steps reported
    assert editor.pipe.scheduler is editor.base_scheduler  # the shared pipeline is left as it was found


class ProgressRecorder:
    """Like gr.Progress: callable, and with a length of 0 (so falsy) until it tracks an iterable."""

    def __init__(self):
        self.calls = []

    def __len__(self):
        return 0

    def __call__(self, value, desc=None):
        self.calls.append((value, desc))


def test_progress_reaches_a_falsy_progress_object(editor):
    progress = ProgressRecorder()
    assert editor.edit(make_image(), make_mask(), "a cat", values=FAST, progress=progress).ok
    assert ((3, 3), "denoising, step 3 of 3") in progress.calls


def test_unranked_without_clip(pipe, tmp_path):
    outcome = WebEditor(pipe, None, results_dir=tmp_path).edit(make_image(), make_mask(), "x",
                                                                values={**FAST, "num_images": 1.0})
    assert outcome.ok and "not ranked" in outcome.message and outcome.table[0][2] == ""


def test_mask_from_editor():
    image = make_image()
    mask = make_mask()
    layer = painted_layer(mask)
    assert np.array_equal(np.asarray(mask_from_editor(editor_value(image, layer), image)), np.asarray(mask))
    # two layers are united; a layer at half size (same aspect) is scaled up to the image
    other = np.zeros((32, 32, 4), np.uint8)
    other[0:4, 0:4, 3] = 255
    united = np.asarray(mask_from_editor({"layers": [layer, other]}, image)) >= 128
    assert united[0:8, 0:8].all() and united[np.asarray(mask) >= 128].all() and not united[60:, 60:].any()
    assert not np.asarray(mask_from_editor(editor_value(image), image)).any()
    with pytest.raises(InputError, match="aspect ratio"):
        mask_from_editor({"layers": [np.zeros((64, 32, 4), np.uint8)]}, image)
    # a plain array or image works too
    assert np.array_equal(np.asarray(mask_from_editor(np.asarray(mask) > 0, image)), np.asarray(mask))


def test_uploaded_mask_becomes_an_editable_layer(tmp_path):
    image = make_image()
    path = tmp_path / "mask.png"
    make_mask(size=(128, 128), box=(32, 32, 80, 96)).save(path)  # twice the size: resized to the image
    layer = mask_layer(image, path)
    assert layer.shape == (64, 64, 4)
    assert np.array_equal(np.asarray(mask_from_editor(editor_value(image, layer), image)), np.asarray(make_mask()))
    make_mask(size=(64, 32)).save(path)
    with pytest.raises(InputError, match=r"'mask.png' is 64x32 .*aspect ratio"):
        mask_layer(image, path)


@pytest.mark.parametrize("invert", [False, True])
def test_empty_or_full_mask_is_refused_with_a_message(editor, invert):
    image = make_image()
    empty = editor.edit(image, editor_value(image), "a cat", values={**FAST, "invert_mask": invert})
    assert not empty.ok and not empty.files
    if invert:  # nothing painted and inverted: everything would change
        assert "covers the whole image" in empty.message
    else:
        assert empty.message.startswith("**Error:**") and "the mask is empty: paint over the region" in empty.message
    full = np.full((64, 64), 255, np.uint8)
    outcome = editor.edit(image, full, "a cat", values={**FAST, "invert_mask": invert})
    assert not outcome.ok
    assert ("the mask is empty" if invert else "covers the whole image") in outcome.message
    assert not list(editor.results_dir.iterdir())  # nothing ran, nothing was written


def test_other_refusals(editor, monkeypatch):
    image, mask = make_image(), make_mask()
    assert "upload an image first" in editor.edit(None, mask, "a cat", values=FAST).message
    assert "type a prompt" in editor.edit(image, mask, "   ", values=FAST).message
    message = editor.edit(image, mask, "a cat", values={**FAST, "num_inference_steps": 0.0}).message
    assert "num_inference_steps=0 is out of range" in message  # EditParams' own message
    assert "seed must be a whole number" in editor.edit(image, mask, "a cat", values={**FAST, "seed": "x"}).message
    message = editor.edit(image, mask, "a cat", values={**FAST, "width": "63"}).message
    assert re.search(r"width=63 must be a multiple of \d+", message)  # the pipeline's own check
    monkeypatch.setattr(webapp, "MAX_EDIT_PIXELS", 32 * 32)
    message = editor.edit(image, mask, "a cat", values={**FAST, "crop": "off"}).message
    assert "editing above" in message and "set crop to auto, or a width (or height)" in message
    assert not list(editor.results_dir.iterdir())


def test_uploads_are_checked(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match="cannot read 'notes.png': not an image file") as info:
        load_source(text)
    assert str(tmp_path) not in str(info.value)  # the page names the file, not the server's path
    big = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    PIL.Image.fromarray(noise).save(big)  # about 0.19 MB: noise does not compress
    with pytest.raises(InputError, match=r"'big.png' is 0.\d MB; the upload limit is 0.1 MB"):
        load_source(big, max_mb=0.1)
    with pytest.raises(InputError, match=r"'big.png' is 256x256 .* the limit is"):
        load_source(big, max_pixels=128 * 128)
    rgba = tmp_path / "layer.png"
    PIL.Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(rgba)
    assert load_source(rgba).getpixel((0, 0)) == (255, 255, 255)  # the library's reading: flattened over white


def test_params_from_values():
    params = params_from_values(" a cat ", "  ", {"num_inference_steps": 20.0, "skip_fraction": 0.5, "seed": "",
                                                  "guidance_scale": 7.5, "width": "64", "invert_mask": True,
                                                  "reconstruction": "poisson"})
    assert params == EditParams(prompt="a cat", num_inference_steps=20, skip_fraction=0.5, guidance_scale=7.5,
                                width=64, invert_mask=True, reconstruction="poisson")
    assert isinstance(params.num_inference_steps, int) and params.negative_prompt is None and params.seed is None
    with pytest.raises(ValueError, match="num_inference_steps must be an integer"):
        params_from_values("a", None, {"num_inference_steps": 2.5})
    with pytest.raises(ValueError, match="reconstruction='blur' is not one of"):
        params_from_values("a", None, {"reconstruction": "blur"})


def test_controls_are_generated_from_edit_params(pipe, scorer, tmp_path):
    import gradio as gr

    app = build_app(pipe, scorer, model=TINY_RANDOM, results_dir=tmp_path)
    controls = {b.elem_id[len("param-"):]: b for b in app.blocks.values()
                if getattr(b, "elem_id", None) and b.elem_id.startswith("param-")}
    names = [f.name for f in dataclasses.fields(EditParams) if f.name not in ("prompt", "negative_prompt", "regions")]
    assert sorted(controls) == sorted(names)
    for field in dataclasses.fields(EditParams):
        if field.name not in controls:
            continue
        control, meta = controls[field.name], field.metadata
        assert meta["help"] in control.info
        if isinstance(field.default, bool):
            assert isinstance(control, gr.Checkbox) and control.value is field.default
        elif meta["choices"]:
            assert isinstance(control, gr.Dropdown) and control.value == field.default
            assert [c[1] for c in control.choices] == list(meta["choices"])
        elif field.default is None and field.name != "guidance_scale":
            assert isinstance(control, gr.Textbox) and control.value == ""  # empty: the default (seed: random)
        else:
            assert isinstance(control, gr.Slider)
            assert (control.minimum, control.maximum) == (meta["low"], meta["high"])
            expected = pipe.default_guidance_scale if field.name == "guidance_scale" else field.default
            assert control.value == expected
    assert controls["num_inference_steps"].label == "steps"  # the CLI flag's words
    assert controls["mask_dilation_iterations"].label == "shrink mask"


def test_controls_start_at_the_models_recommended_values(pipe, tmp_path):
    import json

    from bld.model_defaults import EDIT_DEFAULTS_FILE

    (tmp_path / EDIT_DEFAULTS_FILE).write_text(json.dumps({"skip_fraction": 0.0, "guidance_scale": 12.0,
                                                           "background_noise": "fresh"}))
    app = build_app(pipe, None, model=str(tmp_path), results_dir=tmp_path / "results")
    values = {b.elem_id[len("param-"):]: b.value for b in app.blocks.values()
              if getattr(b, "elem_id", None) and b.elem_id.startswith("param-")}
    assert (values["skip_fraction"], values["guidance_scale"], values["background_noise"]) == (0.0, 12.0, "fresh")
    assert values["num_inference_steps"] == EditParams().num_inference_steps  # not recommended: the default
    infos = {b.elem_id[len("param-"):]: b.info for b in app.blocks.values()
             if getattr(b, "elem_id", None) and b.elem_id.startswith("param-")}
    assert f"Set to 0: recommended for {tmp_path.name} (bld's default: 0.25)." in infos["skip_fraction"]
    assert "recommended" not in infos["num_inference_steps"]
    high = next(f for f in dataclasses.fields(EditParams) if f.name == "seed").metadata["high"]
    assert f"Range [0, {int(high)}]." in infos["seed"] and "e+" not in infos["seed"]  # not 9.22337e+18


def test_preview_shows_the_area_and_the_plan_without_the_model(editor):
    image, mask = make_image((256, 192)), make_mask((256, 192), (40, 40, 80, 90))
    with editor.lock:  # an edit holding the model does not delay a preview
        picture, message = editor.preview(image, editor_value(image, painted_layer(mask)), FAST)
    assert picture.size == image.size
    assert message.startswith("**Preview:** edits 1 crop around the mask") and "yellow" in message
    assert np.asarray(picture)[60, 60].tolist() != np.asarray(image)[60, 60].tolist()
    picture, message = editor.preview(image, editor_value(image), FAST)
    assert picture is None and "the mask is empty" in message
    assert editor.preview(None, None, FAST) == (None, "**Error:** upload an image first")


def test_a_result_can_become_the_next_input(pipe, scorer, tmp_path):
    app = build_app(pipe, scorer, model=TINY_RANDOM, results_dir=tmp_path)
    reuse = next(fn for fn in app.fns.values() if getattr(fn.fn, "__name__", "") == "on_reuse").fn
    result = tmp_path / "result.png"
    make_image((80, 48), seed=3).save(result)
    image, value, message = reuse(1, [str(tmp_path / "other.png"), str(result)])
    assert image.size == (80, 48) and np.array_equal(np.asarray(image), np.asarray(make_image((80, 48), seed=3)))
    assert value["background"] is not None and message.startswith("Result #2 is the input now, 80x48")
    assert reuse(None, [str(result)])[2] == "Select a result in the gallery first."


def test_edit_event_queues_on_one_model_and_can_be_cancelled(pipe, tmp_path):
    app = build_app(pipe, None, results_dir=tmp_path)
    edit = next(fn for fn in app.fns.values() if fn.api_name == "edit")
    edits = {i: fn for i, fn in app.fns.items() if fn.fn is edit.fn}  # the Edit button and Enter in the prompt
    assert len(edits) == 2
    for fn in edits.values():
        assert fn.concurrency_limit == 1 and fn.concurrency_id == edit.concurrency_id and fn.queue
    api = next(fn for fn in app.fns.values() if fn.api_name == "edit_files")  # the HTTP API queues with them
    assert api.concurrency_limit == 1 and api.concurrency_id == edit.concurrency_id
    outpaint = next(i for i, fn in app.fns.items() if fn.api_name == "outpaint")  # and so does outpainting
    assert app.fns[outpaint].concurrency_limit == 1 and app.fns[outpaint].concurrency_id == edit.concurrency_id
    uses_model = {id(edit.fn), id(api.fn), id(app.fns[outpaint].fn)}
    others = [fn for fn in app.fns.values() if id(fn.fn) not in uses_model]
    assert others and all(fn.concurrency_id != edit.concurrency_id for fn in others)  # uploads do not wait
    cancelling = [d for d in app.get_config_file()["dependencies"] if d["cancels"]]
    assert len(cancelling) == 1 and sorted(cancelling[0]["cancels"]) == sorted([*edits, outpaint])
    assert cancelling[0]["targets"][0][0] == next(b for b in app.blocks.values() if b.elem_id == "stop")._id


def test_launch_serves_only_this_host_and_no_extra_paths():
    kwargs = webapp.launch_kwargs("127.0.0.1", 7860)
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False and kwargs["allowed_paths"] == []
    assert kwargs["max_file_size"] == webapp.MAX_UPLOAD_MB * 2**20  # bytes, as check_upload counts them


def test_requests_run_one_at_a_time(editor, monkeypatch):
    """Two sessions edit at once: the model is used by one at a time, both finish."""
    active, most = [0], [0]
    real = webapp.run_edit

    def counting_run_edit(*args, **kwargs):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            active[0] -= 1

    monkeypatch.setattr(webapp, "run_edit", counting_run_edit)
    image, mask = make_image(), make_mask()
    outcomes = {}

    def request(session):
        outcomes[session] = editor.edit(image, mask, "a cat", values={**FAST, "num_images": 1.0}, session=session)

    threads = [threading.Thread(target=request, args=(s,)) for s in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o.ok for o in outcomes.values()) and len(outcomes) == 2
    assert most[0] == 1


def test_a_running_edit_can_be_cancelled(editor):
    image, mask = make_image(), make_mask()
    steps = []

    def progress(value, desc=None):
        if isinstance(value, tuple) and value[0] > 0:
            steps.append(value[0])
            if value[0] == 2:
                assert editor.cancel("s1")  # the Stop button of this session, pressed mid-run
        return None

    outcome = editor.edit(image, mask, "a cat", values={**FAST, "num_inference_steps": 40.0}, progress=progress,
                          session="s1")
    assert not outcome.ok and "Cancelled" in outcome.message and not outcome.files
    assert steps == [1, 2]  # stopped at the next step, not after 30
    assert not editor.cancel("s1")  # nothing running any more
    assert editor.edit(image, mask, "a cat", values=FAST, session="s1").ok  # the model is free again


def test_the_soft_brush_paints_half_strength_for_soft_masks():
    image = make_image()
    full, half = painted_layer(make_mask(box=(0, 0, 32, 64))), painted_layer(make_mask(box=(32, 0, 64, 64)), 76)
    value = editor_value(image, np.maximum(full, half))
    soft = np.asarray(mask_from_editor(value, image, soft=True))
    assert soft[10, 10] == 255 and soft[10, 40] == 127  # 76 / 153 of full strength
    assert np.asarray(mask_from_editor(value, image))[10, 40] == 255  # binary: any paint edits


# -- several regions ---------------------------------------------------------------------------------------

def test_regions_painted_with_their_own_prompts_edit_in_one_pass(editor):
    image, first, second = make_image(), make_mask(box=(4, 4, 28, 28)), make_mask(box=(36, 36, 60, 60))
    rows = [(editor_value(image, painted_layer(second)), "a blue moon"), (editor_value(image), ""), (None, "  ")]
    outcome = editor.edit(image, editor_value(image, painted_layer(first)), "a red star", "", FAST, regions=rows)
    assert outcome.ok, outcome.message
    assert "each region's own prompt inside it" in outcome.message
    union = (np.asarray(first) > 0) | (np.asarray(second) > 0)
    source = np.asarray(image).astype(int)
    for path, record in zip(outcome.files, outcome.results):
        result = np.asarray(PIL.Image.open(path).convert("RGB")).astype(int)
        assert np.array_equal(result[~union], source[~union])
        for mask in (first, second):
            assert np.abs(result[np.asarray(mask) > 0] - source[np.asarray(mask) > 0]).mean() > 10
        assert [r.prompt for r in params_from_metadata(read_png_metadata(path)).regions] == ["a blue moon"]
        assert len(record["region_scores"]) == 2 and record["score"] == min(record["region_scores"])


@pytest.mark.parametrize("row, message", [
    ("prompt only", "region 2 has a prompt but no mask"),
    ("mask only", "region 2 has a mask but no prompt"),
    ("covering", "region 1 is covered entirely by later regions"),
])
def test_a_half_filled_region_row_is_refused_by_number(editor, row, message):
    image, first = make_image(), make_mask(box=(4, 4, 28, 28))
    value = {"prompt only": editor_value(image), "mask only": editor_value(image, painted_layer(make_mask())),
             "covering": editor_value(image, painted_layer(make_mask(box=(0, 0, 40, 40))))}[row]
    rows = [(value, "" if row == "mask only" else "a blue moon")]
    outcome = editor.edit(image, editor_value(image, painted_layer(first)), "a red star", "", FAST, regions=rows)
    assert not outcome.ok and message in outcome.message


def test_preview_shows_every_region(editor):
    image, first, second = make_image(), make_mask(box=(4, 4, 28, 28)), make_mask(box=(36, 36, 60, 60))
    picture, message = editor.preview(image, editor_value(image, painted_layer(first)), FAST,
                                      [(editor_value(image, painted_layer(second)), "a blue moon")])
    assert message.startswith("**Preview:**") and "2 regions" in message
    for x, y in ((16, 16), (48, 48)):
        assert np.asarray(picture)[y, x].tolist() != np.asarray(image)[y, x].tolist()


def test_add_a_region_shows_one_more_row_up_to_three(pipe, tmp_path):
    app = build_app(pipe, None, model=TINY_RANDOM, results_dir=tmp_path)
    groups = [b for b in app.blocks.values() if re.fullmatch(r"region-\d", getattr(b, "elem_id", None) or "")]
    assert len(groups) == webapp.EXTRA_REGIONS == 3 and not any(g.visible for g in groups)
    add = next(fn for fn in app.fns.values() if getattr(fn.fn, "__name__", "") == "on_add_region").fn
    count = 0
    for shown in (1, 2, 3, 3):
        count, *visible, button = add(count)
        assert count == shown and [v["visible"] for v in visible] == [k < shown for k in range(3)]
        assert button["interactive"] is (shown < 3)
    fresh = next(fn for fn in app.fns.values() if getattr(fn.fn, "__name__", "") == "on_new_input").fn
    image = make_image()
    assert all(v["background"] is image and v["layers"] == [] for v in fresh(image))
