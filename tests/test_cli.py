"""The `bld` command: outputs, metadata, reproducible seeds, and one-line errors for bad input."""

import dataclasses
import json

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import make_image, make_mask

from bld.apps.cli import main
from bld.editing import params_from_metadata
from bld.image_io import read_png_metadata

FAST = ["--steps", "4", "--num-results", "2", "--seed", "11", "--model", "tiny-random"]  # CLI mechanics, unranked order


@pytest.fixture
def files(tmp_path):
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    make_image().save(image)
    make_mask().save(mask)
    return tmp_path, str(image), str(mask)


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("bld: error:")]
    assert len(lines) == 1, err
    assert pattern in lines[0], lines[0]


def test_edit_writes_numbered_pngs_with_their_parameters(files, capsys):
    folder, image, mask = files
    code, out, err = run(capsys, "edit", image, mask, "a red star", "-o", folder / "out.png", *FAST, "--json")
    assert code == 0
    # before any work: what is edited, at what size, and what it costs (4 steps, skip 0.25: 3 steps)
    assert "bld: edits the whole 64x64 image, drawn at 64x64; the model's native size is 64 px; 3 denoising " \
           "steps x 2 results" in err
    summary = json.loads(out)
    assert [o["seed"] for o in summary["outputs"]] == [11, 12]
    for k, output in enumerate(summary["outputs"]):
        assert output["path"].endswith(f"out-{k + 1}.png")
        saved = PIL.Image.open(output["path"])
        assert saved.size == (64, 64)
        params = params_from_metadata(read_png_metadata(output["path"]))
        assert (params.seed, params.num_images, params.prompt) == (11 + k, 1, "a red star")
        assert params.guidance_scale == 7.5 and params.num_inference_steps == 4


def test_any_result_can_be_remade_alone_from_its_seed(files, capsys):
    folder, image, mask = files
    run(capsys, "edit", image, mask, "a red star", "-o", folder / "batch.png", *FAST)
    code, _, _ = run(capsys, "edit", image, mask, "a red star", "-o", folder / "alone.png",
                     "--steps", "4", "--num-results", "1", "--seed", "12", "--model", "tiny-random")
    assert code == 0
    batch_second = np.asarray(PIL.Image.open(folder / "batch-2.png"), dtype=int)
    alone = np.asarray(PIL.Image.open(folder / "alone.png"), dtype=int)
    assert np.abs(batch_second - alone).max() <= 1


def test_existing_output_is_kept_unless_overwrite(files, capsys):
    folder, image, mask = files
    target = folder / "out.png"
    target.write_bytes(b"precious")
    code, _, err = run(capsys, "edit", image, mask, "x", "-o", target, "--steps", "4", "--num-results", "1")
    assert_one_line_error(code, err, "already exists: pass --overwrite")
    assert target.read_bytes() == b"precious"
    code, _, _ = run(capsys, "edit", image, mask, "x", "-o", target, "--steps", "4", "--num-results", "1",
                     "--overwrite")
    assert code == 0 and PIL.Image.open(target).size == (64, 64)


def test_inverted_mask_flag(files, capsys):
    folder, image, mask = files
    code, _, _ = run(capsys, "edit", image, mask, "stripes", "-o", folder / "bg.png", "--invert-mask",
                     "--steps", "4", "--num-results", "1")
    assert code == 0
    assert params_from_metadata(read_png_metadata(folder / "bg.png")).invert_mask is True


def test_demo_writes_a_grid_and_refuses_to_overwrite(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "-o", tmp_path / "demo", "--json")
    assert code == 0
    summary = json.loads(out)
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert names == {"input.png", "mask.png", "grid.png", "result-1.png", "result-2.png", "result-3.png",
                     "result-4.png"}
    scores = [o["score"] for o in summary["outputs"]]
    assert scores == sorted(scores, reverse=True)  # ranked best first
    assert all(o["metrics"]["background_psnr"] == "inf" for o in summary["outputs"])  # pixel reconstruction
    from bld.loading import TINY_RANDOM, default_model

    assert summary["model"] == default_model()
    assert ("tiny random components" in err) == (default_model() == TINY_RANDOM)
    grid = PIL.Image.open(tmp_path / "demo" / "grid.png")
    assert grid.width > 3 * 128
    code, _, err = run(capsys, "demo", "-o", tmp_path / "demo")
    assert_one_line_error(code, err, "already exists: pass --overwrite")


def test_local_model_folder_is_loaded(files, capsys, sd_pipe):
    folder, image, mask = files
    sd_pipe.save_pretrained(folder / "model")
    code, out, _ = run(capsys, "edit", image, mask, "x", "-o", folder / "m.png", "--model", folder / "model",
                       "--steps", "4", "--num-results", "1", "--json")
    assert code == 0 and json.loads(out)["model"] == str(folder / "model")
    record = json.loads(read_png_metadata(folder / "m.png")["bld"])
    assert record["model"] == "model"  # the folder's name, not the user's path


def test_results_carry_automatic1111_parameters_and_no_comfyui_prompt_chunk(files, capsys):
    folder, image, mask = files
    code, _, _ = run(capsys, "edit", image, mask, "a red star", "-o", folder / "p.png", "--steps", "4",
                     "--num-results", "1", "--seed", "9", "--negative-prompt", "blue", "--guidance", "6")
    assert code == 0
    chunks = read_png_metadata(folder / "p.png")
    assert "prompt" not in chunks  # ComfyUI reads a `prompt` chunk as its workflow
    lines = chunks["parameters"].splitlines()
    assert lines[0] == "a red star" and lines[1] == "Negative prompt: blue"
    settings = dict(item.split(": ", 1) for item in lines[2].split(", "))
    assert settings["Steps"] == "4" and settings["Seed"] == "9" and settings["CFG scale"] == "6.0"
    assert settings["Model"] == "bld-bundled" and settings["Version"].startswith("bld ")


def test_a_model_folders_recommended_defaults_apply_unless_flags_are_given(files, capsys, sd_pipe):
    from bld.model_defaults import EDIT_DEFAULTS_FILE

    folder, image, mask = files
    sd_pipe.save_pretrained(folder / "model")
    (folder / "model" / EDIT_DEFAULTS_FILE).write_text(json.dumps(
        {"skip_fraction": 0.5, "guidance_scale": 3.0, "background_noise": "fresh"}))
    common = ["--model", folder / "model", "--steps", "4", "--num-results", "1", "--seed", "1"]
    assert run(capsys, "edit", image, mask, "x", "-o", folder / "a.png", *common)[0] == 0
    assert run(capsys, "edit", image, mask, "x", "-o", folder / "b.png", *common, "--skip-fraction", "0.25",
               "--background-noise", "fixed")[0] == 0
    a, b = (params_from_metadata(read_png_metadata(folder / name)) for name in ("a.png", "b.png"))
    assert (a.skip_fraction, a.guidance_scale, a.background_noise) == (0.5, 3.0, "fresh")
    assert (b.skip_fraction, b.guidance_scale, b.background_noise) == (0.25, 3.0, "fixed")


def bad_file(folder, name, content):
    path = folder / name
    path.write_bytes(content) if isinstance(content, bytes) else content.save(path)
    return path


@pytest.mark.parametrize("case,pattern", [
    ("not_an_image", "not an image file"),
    ("missing", "does not exist"),
    ("aspect", "aspect ratio"),
    ("empty_mask", "mask is empty: nothing to edit"),
    ("full_mask", "mask covers the whole image"),
    ("inverted_full_mask", "mask is empty: nothing to edit; paint the region to change in white (the mask was inverted)"),
    ("steps", "num_inference_steps=0 is out of range"),
    ("guidance", "guidance_scale=-2.0 is out of range"),
    ("skip", "skip_fraction=1.0 is out of range"),
    ("width", "width=65 must be a multiple of"),
    ("jpg_output", "must end in .png"),
    ("missing_folder", "does not exist: create it"),
    ("model_folder", "has no model_index.json"),
    ("model_file", "is a single file"),
    ("hub_id_offline", "cannot load model 'someone/some-model': it is not a local folder and the Hugging Face Hub"),
    ("hub_unreachable", "'someone/some-model' is not a local folder and the Hugging Face Hub cannot be reached "
                        "from here: pass --model with a diffusers folder"),
    ("tiny_image", "each side must be at least"),
    ("huge_for_editing", "use --crop auto (edit around the mask), or --width"),
    ("bad_choice", "invalid choice"),
    ("bad_device", "unknown device"),
])
def test_bad_input_gets_one_line_and_no_output(files, capsys, monkeypatch, case, pattern):
    folder, image, mask = files
    out = folder / "result.png"
    extra = ["--steps", "4", "--num-results", "1"]
    if case == "not_an_image":
        image = bad_file(folder, "notes.png", b"hello, not a picture")
    elif case == "missing":
        image = folder / "nope.png"
    elif case == "aspect":
        mask = bad_file(folder, "wide.png", make_mask((128, 64)))
    elif case == "empty_mask":
        mask = bad_file(folder, "empty.png", PIL.Image.new("L", (64, 64), 0))
    elif case in ("full_mask", "inverted_full_mask"):
        mask = bad_file(folder, "full.png", PIL.Image.new("L", (64, 64), 255))
        extra += ["--invert-mask"] if case == "inverted_full_mask" else []
    elif case == "steps":
        extra = ["--steps", "0"]
    elif case == "guidance":
        extra += ["--guidance", "-2"]
    elif case == "skip":
        extra += ["--skip-fraction", "1"]
    elif case == "width":
        extra += ["--width", "65"]
    elif case == "jpg_output":
        out = folder / "result.jpg"
    elif case == "missing_folder":
        out = folder / "no" / "result.png"
    elif case == "model_folder":
        (folder / "not_a_model").mkdir()
        extra += ["--model", folder / "not_a_model"]
    elif case == "model_file":
        extra += ["--model", bad_file(folder, "weights.safetensors", b"\0" * 16)]
    elif case == "hub_id_offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail fast; there is no network here either way
        extra += ["--model", "someone/some-model"]
    elif case == "hub_unreachable":
        import bld.hub

        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(bld.hub, "hub_reachable", lambda: False)
        extra += ["--model", "someone/some-model"]
    elif case == "tiny_image":
        image = bad_file(folder, "tiny.png", make_image((4, 4)))
        mask = bad_file(folder, "tinymask.png", make_mask((4, 4), box=(1, 1, 3, 3)))
    elif case == "huge_for_editing":
        image = bad_file(folder, "big.png", PIL.Image.new("RGB", (3000, 2000), "gray"))
        mask = bad_file(folder, "bigmask.png", make_mask((3000, 2000), box=(10, 10, 500, 500)))
        extra += ["--crop", "off"]  # crop 'auto' (the default) edits it around the mask
    elif case == "bad_choice":
        extra += ["--latent-mask-mode", "bilinear"]
    elif case == "bad_device":
        extra += ["--device", "tpu9"]
    code, _, err = run(capsys, "edit", image, mask, "a red star", "-o", out, *extra)
    if case == "bad_choice":  # argparse's own message, made one line
        assert code == 2 and pattern in err and len(err.strip().splitlines()) == 1
    else:
        assert_one_line_error(code, err, pattern)
    assert not out.exists()
    assert not list(folder.glob("*.tmp"))


def test_edit_summary_has_scores_and_metrics_and_ranks_best_first(files, capsys):
    folder, image, mask = files
    code, out, _ = run(capsys, "edit", image, mask, "a red star", "-o", folder / "r.png", "--steps", "4",
                       "--num-results", "3", "--seed", "5", "--reconstruction", "none", "--json")
    assert code == 0
    outputs = json.loads(out)["outputs"]
    scores = [o["score"] for o in outputs]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3
    assert sorted(o["seed"] for o in outputs) == [5, 6, 7]
    for o in outputs:
        assert set(o["metrics"]) == {"background_psnr", "background_ssim", "edge_delta_e", "text_match"}
        assert isinstance(o["metrics"]["background_psnr"], float)  # no reconstruction: the VAE drifts
        assert params_from_metadata(read_png_metadata(o["path"])).seed == o["seed"]


def test_no_rank_keeps_generation_order(files, capsys):
    folder, image, mask = files
    code, out, _ = run(capsys, "edit", image, mask, "a red star", "-o", folder / "n.png", "--steps", "4",
                       "--num-results", "3", "--seed", "5", "--no-rank", "--json")
    assert code == 0
    assert [o["seed"] for o in json.loads(out)["outputs"]] == [5, 6, 7]
    assert all(o["score"] is None for o in json.loads(out)["outputs"])


def test_reconstruct_command_pastes_the_original_background(files, capsys):
    folder, image, mask = files
    run(capsys, "edit", image, mask, "a red star", "-o", folder / "raw.png", "--steps", "4", "--num-results", "1",
        "--reconstruction", "none")
    code, out, _ = run(capsys, "reconstruct", image, mask, folder / "raw.png", "-o", folder / "fixed.png",
                       "--method", "pixel", "--json")
    assert code == 0
    original = np.asarray(PIL.Image.open(image))
    fixed = np.asarray(PIL.Image.open(folder / "fixed.png"))
    outside = np.asarray(PIL.Image.open(mask)) < 128
    assert np.array_equal(fixed[outside], original[outside])
    assert json.loads(out)["outputs"][0]["metrics"]["background_psnr"] == "inf"
    metadata = read_png_metadata(folder / "fixed.png")
    assert json.loads(metadata["bld_reconstruction"])["method"] == "pixel"
    assert params_from_metadata(metadata).prompt == "a red star"  # the edit's parameters carried over


def test_reconstruct_refuses_a_result_of_another_size(files, capsys):
    folder, image, mask = files
    make_image((32, 32)).save(folder / "small.png")
    code, _, err = run(capsys, "reconstruct", image, mask, folder / "small.png", "-o", folder / "x.png",
                       "--method", "pixel")
    assert_one_line_error(code, err, "must have the same size")
    assert not (folder / "x.png").exists()


def test_reconstruct_decoder_loads_only_the_vae(files, capsys, monkeypatch):
    import bld.loading

    folder, image, mask = files
    run(capsys, "edit", image, mask, "a red star", "-o", folder / "raw.png", "--steps", "4", "--num-results", "1",
        "--reconstruction", "none")

    def no_pipeline(*args, **kwargs):
        raise AssertionError("bld reconstruct loaded the whole pipeline")

    monkeypatch.setattr(bld.loading, "load_pipeline", no_pipeline)
    code, out, err = run(capsys, "reconstruct", image, mask, folder / "raw.png", "-o", folder / "fixed.png",
                         "--method", "decoder", "--steps", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["outputs"][0]["path"] == str(folder / "fixed.png")


@pytest.mark.parametrize("case", ["missing image", "empty mask", "other aspect"])
def test_bad_files_are_reported_before_torch_or_a_model_loads(tmp_path, case):
    """A bad file must not wait for torch, diffusers and the model (seconds) to be told."""
    import subprocess
    import sys

    make_image().save(tmp_path / "image.png")
    mask = {"missing image": make_mask(), "empty mask": PIL.Image.new("L", (64, 64)),
            "other aspect": PIL.Image.new("L", (64, 32), 255)}[case]
    mask.save(tmp_path / "mask.png")
    image = tmp_path / ("absent.png" if case == "missing image" else "image.png")
    code = ("import sys; from bld.apps.cli import main; code = main(sys.argv[1:]); "
            "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, "edit", str(image), str(tmp_path / "mask.png"), "a red star",
                             "-o", str(tmp_path / "out.png")], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("bld: error:")
    assert "''" not in result.stderr and '"\'' not in result.stderr  # no doubled quotes


def test_libraries_are_quiet_unless_verbose(files):
    """No loading bars or library warnings by default (a subprocess: the libraries read their settings at
    import); --verbose shows them."""
    import subprocess
    import sys

    folder, image, mask = files
    command = [sys.executable, "-m", "bld", "edit", image, mask, "a red star", "--steps", "2", "--num-results", "1"]
    quiet = subprocess.run(command + ["-o", str(folder / "q.png")], capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading" not in quiet.stderr and "torchvision" not in quiet.stderr, quiet.stderr
    verbose = subprocess.run(command + ["-o", str(folder / "v.png"), "--verbose"], capture_output=True, text=True)
    assert verbose.returncode == 0 and "Loading pipeline components" in verbose.stderr


def test_serve_offers_only_flags_that_mean_something_there(capsys):
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0 and "--port" in out
    assert "--overwrite" not in out and "--json" not in out


def test_a_word_the_bundled_model_does_not_know_is_named(files, capsys):
    folder, image, mask = files
    code, _, err = run(capsys, "edit", image, mask, "a dog", "-o", folder / "dog.png", "--steps", "2",
                       "--num-results", "1")
    assert code == 0
    line = next(line for line in err.splitlines() if "does not know" in line)
    assert "'dog'" in line and "'a'" not in line.split("it knows")[0] and " star " in line
    code, _, err = run(capsys, "edit", image, mask, "a red star", "-o", folder / "star.png", "--steps", "2",
                       "--num-results", "1")
    assert code == 0 and "does not know" not in err


def test_a_general_tokenizer_knows_every_word(sd_pipe):
    from bld.editing import unknown_words

    class Big:
        def __len__(self):
            return 49_408

    assert unknown_words(Big(), "a dog") == ([], [])
    assert unknown_words(None, "a dog") == ([], [])


def test_an_unreachable_hub_is_seen_as_such(monkeypatch):
    import socket

    from bld.hub import hub_reachable

    with socket.socket() as s:  # a local port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_reachable(timeout=1.0) is False


def test_a_gray_mask_edits_with_soft_mask_and_is_empty_without(files, capsys):
    folder, image, _ = files
    gray = folder / "gray.png"
    PIL.Image.fromarray(np.where(np.asarray(make_mask()) > 0, 100, 0).astype(np.uint8)).save(gray)
    code, _, err = run(capsys, "edit", image, gray, "a red star", "-o", folder / "hard.png", *FAST)
    assert_one_line_error(code, err, "mask is empty")
    code, out, _ = run(capsys, "edit", image, gray, "a red star", "-o", folder / "soft.png", *FAST, "--soft-mask",
                       "--mask-blur", "2", "--json")
    assert code == 0
    params = params_from_metadata(read_png_metadata(json.loads(out)["outputs"][0]["path"]))
    assert params.soft_mask and params.mask_blur == 2.0
    edited = np.asarray(PIL.Image.open(folder / "soft-1.png"), dtype=int)
    assert (np.abs(edited - np.asarray(make_image(), dtype=int)).max(axis=-1) > 0).any()


def test_convert_saves_a_single_file_checkpoint_as_a_folder_bld_loads(tmp_path, capsys, monkeypatch):
    """diffusers' from_single_file does the weight conversion (its own tests cover it); bld's part is the
    family, the config and local-only choice, the atomic folder and a folder that loads and edits."""
    import diffusers
    from safetensors.torch import save_file

    from bld.loading import load_pipeline
    from bld.testing.tiny_models import tiny_sd_components

    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(checkpoint))
    calls = []

    def from_single_file(cls, path, **kwargs):
        calls.append((cls.__name__, path, kwargs))
        components = tiny_sd_components(tokenizer_dir=tmp_path / "tok")
        return diffusers.StableDiffusionPipeline(**components)

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_single_file", classmethod(from_single_file))
    config = tmp_path / "config-folder"
    config.mkdir()
    out = tmp_path / "converted"
    code, printed, err = run(capsys, "convert", checkpoint, out, "--config", config)
    assert code == 0, err
    assert printed.strip() == str(out)
    assert calls == [("StableDiffusionPipeline", str(checkpoint), {"config": str(config), "local_files_only": True})]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converted-")]  # no staging folder left
    pipe = load_pipeline(str(out))
    assert type(pipe).__name__ == "BlendedLatentDiffusionPipeline"
    code, _, err = run(capsys, "convert", checkpoint, out, "--config", config)
    assert_one_line_error(code, err, "already exists: pass --overwrite")


def test_convert_offline_without_a_config_says_to_pass_one(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    from bld.loading import checkpoint_is_xl

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(checkpoint))
    code, _, err = run(capsys, "convert", checkpoint, tmp_path / "out")
    assert_one_line_error(code, err, "cannot convert model.safetensors as SD 1.x/2.x: pass --config with a diffusers")
    assert not (tmp_path / "out").exists()
    code, _, err = run(capsys, "convert", tmp_path / "missing.safetensors", tmp_path / "out")
    assert_one_line_error(code, err, "not found")
    xl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(1)}, str(xl))
    assert checkpoint_is_xl(xl) and not checkpoint_is_xl(checkpoint)


# -- several regions ---------------------------------------------------------------------------------------

def test_region_adds_a_region_with_its_own_prompt_scored_and_recorded(files, capsys):
    folder, image, mask = files
    make_mask(box=(44, 4, 60, 20)).save(folder / "moon.png")
    code, out, err = run(capsys, "edit", image, mask, "a red star", "--region", folder / "moon.png", "a blue moon",
                         "-o", folder / "r.png", "--steps", "4", "--num-results", "2", "--seed", "3", "--json")
    assert code == 0, err
    assert "2 regions' prompts in each model call" in err
    summary = json.loads(out)
    assert summary["params"]["regions"] == [{"prompt": "a blue moon", "negative_prompt": None, "strength": 1.0}]
    union = (np.asarray(make_mask()) > 0) | (np.asarray(make_mask(box=(44, 4, 60, 20))) > 0)
    for output in summary["outputs"]:
        assert len(output["region_scores"]) == 2 and output["score"] == min(output["region_scores"])
        params = params_from_metadata(read_png_metadata(output["path"]))
        assert [r.prompt for r in params.regions] == ["a blue moon"] and params.seed == output["seed"]
        result = np.asarray(PIL.Image.open(output["path"]).convert("RGB"))
        assert np.array_equal(result[~union], np.asarray(make_image())[~union])


def test_a_region_takes_its_own_strength_and_negative_prompt(files, capsys):
    folder, image, mask = files
    make_mask(box=(44, 4, 60, 20)).save(folder / "moon.png")
    code, out, err = run(capsys, "edit", image, mask, "a red star", "--region", folder / "moon.png", "a blue moon",
                         "strength=0.5", "negative=clouds", "-o", folder / "r.png", *FAST, "--json")
    assert code == 0, err
    expected = [{"prompt": "a blue moon", "negative_prompt": "clouds", "strength": 0.5}]
    assert json.loads(out)["params"]["regions"] == expected
    params = params_from_metadata(read_png_metadata(json.loads(out)["outputs"][0]["path"]))
    assert [dataclasses.asdict(r) for r in params.regions] == expected


@pytest.mark.parametrize("case, pattern", [
    ("missing", "moon.png"),
    ("aspect", "'{folder}/moon.png' is 128x64 but image"),
    ("empty", "region mask '{folder}/moon.png': mask is empty"),
    ("invert", "--invert-mask does not apply to several regions"),
    ("covered", "region 1 is covered entirely by later regions"),
    ("no prompt", "--region {folder}/moon.png: give --region MASK PROMPT"),
    ("bad option", "--region {folder}/moon.png: 'size=3' is not strength=S or negative=TEXT"),
    ("bad strength", "--region {folder}/moon.png: strength=1.5 must be a number in (0, 1]"),
])
def test_a_bad_region_gets_one_line_naming_it_and_no_output(files, capsys, case, pattern):
    folder, image, mask = files
    moon, extra = folder / "moon.png", []
    region = {"no prompt": [moon], "bad option": [moon, "a blue moon", "size=3"],
              "bad strength": [moon, "a blue moon", "strength=1.5"]}.get(case, [moon, "a blue moon"])
    if case == "aspect":
        make_mask((128, 64), box=(4, 4, 40, 20)).save(moon)
    elif case == "empty":
        PIL.Image.new("L", (64, 64), 0).save(moon)
    elif case == "covered":
        make_mask(box=(8, 8, 48, 56)).save(moon)
    elif case != "missing":
        make_mask(box=(44, 4, 60, 20)).save(moon)
    if case == "invert":
        extra = ["--invert-mask"]
    code, _, err = run(capsys, "edit", image, mask, "a red star", "--region", *region, "-o",
                       folder / "r.png", *FAST, *extra)
    assert_one_line_error(code, err, pattern.format(folder=folder))
    assert not list(folder.glob("r*.png"))


def test_a_bad_region_mask_is_reported_before_torch_loads(tmp_path):
    import subprocess
    import sys

    make_image().save(tmp_path / "image.png")
    make_mask().save(tmp_path / "mask.png")
    PIL.Image.new("L", (64, 32), 255).save(tmp_path / "wide.png")
    code = ("import sys; from bld.apps.cli import main; code = main(sys.argv[1:]); "
            "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, "edit", str(tmp_path / "image.png"),
                             str(tmp_path / "mask.png"), "a red star", "--region", str(tmp_path / "wide.png"), "x",
                             "-o", str(tmp_path / "out.png")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout.strip() == "[]", result.stderr
    assert result.stderr.count("\n") == 1 and "wide.png" in result.stderr
