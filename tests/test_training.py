"""Smoke tests of bld.training: tokenizer coverage, a few VAE and UNet steps, checkpoints, resume, export."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from bld.training.tokenizer import MODEL_MAX_LENGTH, check_word_level, write_world_tokenizer
from bld.world import SHAPES, sample_batch, sample_edit_task, vocabulary


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return write_world_tokenizer(tmp_path_factory.mktemp("tok"))


def test_tokenizer_one_token_per_word(tokenizer):
    check_word_level(tokenizer)
    captions = [c for _, c, _ in sample_batch(7, 300, training_captions=True)]
    captions += [c for _, c, _ in sample_batch(8, 100)]
    rng = np.random.default_rng(0)
    captions += [sample_edit_task(rng).prompt for _ in range(30)]
    captions.append("a red star and a blue circle and an orange heart on a white and black checkerboard")
    words = set()
    for c in captions:
        ids = tokenizer(c).input_ids
        assert len(ids) == len(c.split()) + 2 <= MODEL_MAX_LENGTH, c
        assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == [w + "</w>" for w in c.split()]
        words.update(c.split())
    assert words <= set(vocabulary())
    # text outside the grammar still tokenizes (into characters), and padding fills model_max_length
    out = tokenizer(["a zebra on mars!", ""], padding="max_length", max_length=tokenizer.model_max_length)
    assert all(len(ids) == MODEL_MAX_LENGTH for ids in out.input_ids)
    assert tokenizer.unk_token_id not in out.input_ids[0][1:-1] or "zebra" not in tokenizer.get_vocab()


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from bld.training import train_vae

    out = tmp_path_factory.mktemp("vae")
    common = ["--out", str(out), "--batch", "4", "--seed", "0", "--eval-n", "4", "--no-progress",
              "--log-every", "1", "--eval-every", "3", "--ckpt-every", "3"]
    first = train_vae.train(train_vae.parse_args(common + ["--steps", "3"]))
    return out, first, common


def test_vae_trains_checkpoints_and_resumes(vae_run):
    from bld.training import train_vae

    out, first, common = vae_run
    assert first["step"] == 3
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 3
    assert (out / "checkpoint" / "vae" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "vae" / "config.json").exists()
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "train"] == [1, 2, 3]
    assert any(x["event"] == "eval" and x["heldout_psnr"] > 0 for x in lines)

    second = train_vae.train(train_vae.parse_args(common + ["--steps", "5", "--resume"]))
    assert second["step"] == 5
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "train"] == [1, 2, 3, 4, 5]  # continued, not restarted
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 5

    from diffusers import AutoencoderKL

    report = train_vae.reconstruction_report(AutoencoderKL.from_pretrained(out / "vae"), seed=0, n=4)
    assert report["images"] == 4 and report["objects"] >= 1
    assert 0 <= report["object_color_nearest_correct"] <= 1 and 0 <= report["object_shape_iou"] <= 1


def test_unet_trains_and_exports_a_standard_pipeline(vae_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    from bld import BlendedLatentDiffusionPipeline
    from bld.ranking import ClipScorer
    from bld.training import train_unet

    vae_dir = vae_run[0]
    out = tmp_path / "unet"
    result = train_unet.train(train_unet.parse_args(
        ["--vae", str(vae_dir), "--out", str(out), "--steps", "3", "--batch", "4", "--log-every", "1",
         "--ckpt-every", "2", "--no-progress"]))
    assert result["step"] == 3
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 3
    folder = out / "pipeline"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 40e6
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".ckpt")]  # safetensors only

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.safety_checker is None and pipe.tokenizer.model_max_length == MODEL_MAX_LENGTH
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red star on blue dots", num_inference_steps=2, output_type="pil",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)

    bld_pipe = BlendedLatentDiffusionPipeline.from_pretrained(folder)
    bld_pipe.set_progress_bar_config(disable=True)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 16:40] = 255
    edited = bld_pipe("a red star", image=image, mask_image=PIL.Image.fromarray(mask), num_inference_steps=3,
                      generator=torch.Generator().manual_seed(0)).images[0]
    assert edited.size == (64, 64)

    scorer = ClipScorer.from_pretrained(folder / "clip")
    scores = scorer.score([edited, image], "a red star", PIL.Image.fromarray(mask))
    assert len(scores) == 2 and all(-1 <= s <= 1 for s in scores)

    # resume continues from the checkpoint's step
    result = train_unet.train(train_unet.parse_args(
        ["--vae", str(vae_dir), "--out", str(out), "--steps", "4", "--batch", "4", "--resume", "--no-progress"]))
    assert result["step"] == 4


def test_measure_writes_a_report_of_shares(tmp_path):
    from bld.training import measure

    out = tmp_path / "measure"
    measure.main(["--model", "tiny-random", "--out", str(out), "--t2i", "3", "--edits", "2", "--steps", "2",
                  "--num-images", "2", "--reconstruction", "pixel", "--threads", "1"])
    report = json.loads((out / "report.json").read_text())
    t2i = report["text_to_image"]
    assert t2i["samples"] == 3
    assert all(0 <= t2i[k] <= 1 for k in ("shape", "color", "shape_and_color", "pattern", "bg_color"))
    assert set(t2i["shape_by_prompted_shape"]) <= set(SHAPES)
    assert all(0 <= v <= 1 for v in t2i["shape_by_prompted_shape"].values())
    edits = report["edits"]
    assert edits["tasks"] == 2 and set(edits) >= {"add", "replace", "all"}
    assert all(0 <= edits["all"][k] <= 1 for k in ("all_results", "best_of_n", "any_of_n"))
    assert edits["all"]["background_psnr_min"] == float("inf")  # pixel reconstruction keeps the outside exactly
    assert (out / "t2i.png").is_file() and (out / "edits.png").is_file()
