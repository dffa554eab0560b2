"""Smoke tests of bld.world.training: tokenizer coverage, a few VAE and UNet steps, checkpoints, resume, export."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from bld.world.scenes import COLORS, SHAPES, sample_batch, sample_edit_task, vocabulary
from bld.world.training.tokenizer import MODEL_MAX_LENGTH, check_word_level, write_world_tokenizer

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
    from bld.world.training import train_vae

    out = tmp_path_factory.mktemp("vae")
    common = ["--out", str(out), "--batch", "4", "--seed", "0", "--eval-n", "4", "--no-progress",
              "--log-every", "1", "--eval-every", "3", "--ckpt-every", "3"]
    first = train_vae.train(train_vae.parse_args(common + ["--steps", "3"]))
    return out, first, common


def test_vae_trains_checkpoints_and_resumes(vae_run):
    from bld.world.training import train_vae

    out, first, common = vae_run
    assert first["step"] == 3
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 3
    assert (out / "checkpoint" / "vae" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "vae" / "config.json").exists()
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "train"] == [1, 2, 3]
    assert any(x["event"] == "eval" and x["heldout_psnr"] > 0 for x in lines)

    # a run killed after its last checkpoint logged steps that the resumed run redoes: they are dropped
    with (out / "log.jsonl").open("a") as f:
        f.write(json.dumps({"event": "train", "step": 4, "loss": 9.9}) + "\n")
    second = train_vae.train(train_vae.parse_args(common + ["--steps", "5", "--resume"]))
    assert second["step"] == 5
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "train"] == [1, 2, 3, 4, 5]  # continued, not restarted
    assert all(x.get("loss") != 9.9 for x in lines)
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 5

    from diffusers import AutoencoderKL

    report = train_vae.reconstruction_report(AutoencoderKL.from_pretrained(out / "vae"), seed=0, n=4)
    assert report["images"] == 4 and report["objects"] >= 1
    assert 0 <= report["object_color_nearest_correct"] <= 1 and 0 <= report["object_shape_iou"] <= 1


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    from bld.world.training import train_clip

    out = tmp_path_factory.mktemp("clip")
    common = ["--out", str(out), "--batch", "8", "--seed", "0", "--log-every", "1", "--ckpt-every", "2",
              "--eval-every", "1", "--no-progress", "--threads", "1", "--pretrain-steps", "1", "--pretrain-batch", "4"]
    first = train_clip.train(train_clip.parse_args(common + ["--steps", "2"]))
    return out, first, common


def test_clip_trains_resumes_and_exports_a_clip_model(clip_run):
    from transformers import CLIPModel, CLIPTokenizer

    from bld.world.training import train_clip

    out, first, common = clip_run
    assert first["step"] == 3 and set(first["zero_shot"]) == {"shape_object", "shape_full", "color_object", "shape_masked"}
    assert all(0 <= v <= 1 for v in first["zero_shot"].values())
    second = train_clip.train(train_clip.parse_args(common + ["--steps", "3", "--resume"]))
    assert second["step"] == 4
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    train = [(x["phase"], x["step"]) for x in lines if x["event"] == "train"]
    assert train == [("pretrain", 1), ("contrastive", 2), ("contrastive", 3), ("contrastive", 4)]  # resumed
    evals = [x for x in lines if x["event"] == "eval"]
    assert "pretrain_shape" in evals[0] and "shape_masked" in evals[-1]
    clip = CLIPModel.from_pretrained(out / "clip")
    tok = CLIPTokenizer.from_pretrained(out / "clip")
    assert tok("a red star").input_ids[1:-1] == tok.convert_tokens_to_ids(["a</w>", "red</w>", "star</w>"])
    assert clip.config.text_config.vocab_size == len(tok.get_vocab())


def test_clip_continued_with_a_frozen_text_tower_keeps_it(clip_run, tmp_path):
    from transformers import CLIPModel

    from bld.world.training import train_clip

    start = CLIPModel.from_pretrained(clip_run[0] / "clip")
    out = tmp_path / "more"
    train_clip.train(train_clip.parse_args(
        ["--out", str(out), "--init", str(clip_run[0] / "clip"), "--freeze-text", "--pretrain-steps", "0",
         "--steps", "12", "--batch", "8", "--cut", "4", "--eval-every", "0", "--no-progress", "--threads", "1"]))
    after = CLIPModel.from_pretrained(out / "clip")
    before_text, after_text = start.text_model.state_dict(), after.text_model.state_dict()
    assert all(torch.equal(before_text[k], after_text[k]) for k in before_text)
    assert not torch.equal(start.vision_model.embeddings.patch_embedding.weight,
                           after.vision_model.embeddings.patch_embedding.weight)


def test_clip_batches_are_seeded_views_with_their_captions():
    from bld.world.training.train_clip import clip_batch

    x, captions, negatives = clip_batch(3, 10, 40)
    x2, captions2, negatives2 = clip_batch(3, 10, 40)
    assert torch.equal(x, x2) and captions == captions2 and negatives == negatives2
    assert x.shape == (40, 3, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    # masked views (an object's caption, black outside a rectangle) and inverted ones (background caption)
    black = (x.sum(1) == 0).float().mean((1, 2))
    assert (black > 0.3).any()
    for cap, negs in zip(captions, negatives):
        assert cap not in negs and all(len(n.split()) == len(cap.split()) for n in negs)


def test_cut_pairs_show_an_object_whole_and_cut_by_the_rectangles_edge():
    from bld.world.training.train_clip import cut_pairs

    wholes, cuts, captions = cut_pairs(3, 0, 30)
    again = cut_pairs(3, 0, 30)
    assert torch.equal(wholes, again[0]) and torch.equal(cuts, again[1]) and captions == again[2]
    assert len(captions) >= 20 and wholes.shape == cuts.shape == (len(captions), 3, 64, 64)
    shown = lambda x: (x.sum(1) > 0).float().sum((1, 2))  # noqa: E731 - pixels inside the rectangle
    assert (shown(wholes) > 0).all() and (shown(cuts) > 0).all()
    assert not any(torch.equal(w, c) for w, c in zip(wholes, cuts))
    assert all(c.startswith(("a ", "an ")) and " on " not in c for c in captions)  # object captions


def test_hard_negatives_swap_each_other_shape_and_some_colors_and_keep_articles():
    from bld.world.training.train_clip import hard_negatives

    rng = np.random.default_rng(0)
    for _ in range(20):
        negs = hard_negatives(rng, "a red star on blue stripes")
        shape_swaps = [n for n in negs if n.startswith("a red ") and n.endswith(" on blue stripes")]
        assert sorted(n.split()[2] for n in shape_swaps) == sorted(s for s in SHAPES if s != "star")
        color_swaps = [n for n in negs if n not in shape_swaps]
        assert len(color_swaps) == 2
        for n in color_swaps:  # one color word differs (the object's or the background's), articles agree
            words, original = n.split(), "a red star on blue stripes".split()
            changed = [k for k, (a, b) in enumerate(zip(words, original)) if a != b and k > 0]
            assert len(changed) == 1 and words[changed[0]] in COLORS
            assert words[0] == ("an" if words[1][0] in "aeiou" else "a")
    # another object of the same scene is not a negative
    assert all(n != "a blue circle" for _ in range(50)
               for n in hard_negatives(rng, "a red circle", {"a red circle", "a blue circle"}))
    assert hard_negatives(rng, "purple dots", shapes=5, colors=7) and all(
        n.endswith(" dots") for n in hard_negatives(rng, "purple dots"))


def test_unet_trains_and_exports_a_standard_pipeline(vae_run, clip_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    from bld import BlendedLatentDiffusionPipeline
    from bld.ranking import ClipScorer
    from bld.world.training import train_unet

    vae_dir, clip_dir = vae_run[0], clip_run[0]
    out = tmp_path / "unet"
    result = train_unet.train(train_unet.parse_args(
        ["--vae", str(vae_dir), "--clip", str(clip_dir), "--out", str(out), "--steps", "3", "--batch", "4",
         "--log-every", "1", "--ckpt-every", "2", "--no-progress", "--threads", "1"]))
    assert result["step"] == 3
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["step"] == 3
    folder = out / "pipeline"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 40e6
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".ckpt")]  # safetensors only
    from bld.model_defaults import model_edit_defaults
    from bld.world.training.configs import WORLD_EDIT_DEFAULTS

    assert model_edit_defaults(str(folder)) == WORLD_EDIT_DEFAULTS
    for part in ("tokenizer", "clip"):  # no padding or truncation left over from training's tokenizer calls
        saved = json.loads((folder / part / "tokenizer.json").read_text())
        assert saved["padding"] is None and saved["truncation"] is None, part

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.safety_checker is None and pipe.tokenizer.model_max_length == MODEL_MAX_LENGTH
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red star on blue dots", num_inference_steps=2, output_type="pil",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    # the frozen text tower is the CLIP model's: the exported text encoder equals it
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(clip_dir / "clip")
    ids = pipe.tokenizer("a red star", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(pipe.text_encoder(ids).last_hidden_state, clip.text_model(input_ids=ids).last_hidden_state)

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

    # resume continues from the checkpoint's step, finding the VAE and CLIP folders in its meta.json
    result = train_unet.train(train_unet.parse_args(
        ["--out", str(out), "--steps", "4", "--batch", "4", "--resume", "--no-progress", "--threads", "1"]))
    assert result["step"] == 4
    # --init-unet starts a new run from a UNet's weights (here at learning rate 0: the export is those weights)
    from safetensors.torch import load_file

    warm = tmp_path / "warm"
    train_unet.train(train_unet.parse_args(
        ["--vae", str(vae_dir), "--clip", str(clip_dir), "--init-unet", str(out / "checkpoint" / "unet"),
         "--out", str(warm), "--steps", "1", "--batch", "4", "--lr", "0", "--no-progress", "--threads", "1"]))
    init = load_file(out / "checkpoint" / "unet" / "diffusion_pytorch_model.safetensors")
    exported = load_file(warm / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert init.keys() == exported.keys() and all(torch.equal(init[k], exported[k]) for k in init)
    # ... and refuses a CLIP model with another text tower than the one the UNet was trained on
    import shutil

    other = tmp_path / "other-clip"
    shutil.copytree(clip_dir / "clip", other)
    with torch.no_grad():
        clip.text_model.embeddings.token_embedding.weight.add_(0.1)
    clip.save_pretrained(other)
    with pytest.raises(SystemExit, match="another text tower"):
        train_unet.train(train_unet.parse_args(["--out", str(out), "--clip", str(other), "--steps", "5",
                                                "--batch", "4", "--resume", "--no-progress", "--threads", "1"]))


def test_folder_written_atomically_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    from bld.world.training import folder_written_atomically

    target = tmp_path / "model"
    with folder_written_atomically(target) as tmp:
        (tmp / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError), folder_written_atomically(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("interrupted")
    assert (target / "weights").read_text() == "v1"  # a failed write leaves the previous folder as it was
    with folder_written_atomically(target) as tmp:
        (tmp / "other").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["other"]  # replaced whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no .tmp or .old left behind


def test_checkpoint_paths_are_relative_to_the_working_directory_when_inside_it(tmp_path, monkeypatch):
    from bld.world.training.train_unet import portable_path

    (tmp_path / "repo" / "checkpoints" / "vae").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    assert portable_path(tmp_path / "repo" / "checkpoints" / "vae") == "checkpoints/vae"
    assert portable_path(tmp_path / "elsewhere") == str((tmp_path / "elsewhere").resolve())


def test_unet_learning_rate_warms_up_then_decays_linearly_to_its_final_value():
    from bld.world.training.train_unet import lr_factor

    schedule = dict(lr=1e-4, lr_final=1e-5, decay_start=1000, steps=2000, warmup=100)
    assert lr_factor(0, **schedule) == pytest.approx(0.01)
    assert lr_factor(99, **schedule) == lr_factor(1000, **schedule) == 1.0
    assert lr_factor(1500, **schedule) == pytest.approx(0.55)
    assert lr_factor(2000, **schedule) == pytest.approx(0.1)
    factors = [lr_factor(s, **schedule) for s in range(1000, 2001, 50)]
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert lr_factor(1500, **{**schedule, "lr_final": None}) == 1.0  # no --lr-final: constant after warmup
    assert lr_factor(1500, **{**schedule, "lr": 0.0}) == 1.0  # learning rate 0 stays 0 (no ratio to decay by)


def test_measure_writes_a_report_of_shares(tmp_path):
    from bld.world.training import measure

    out = tmp_path / "measure"
    measure.main(["--model", "tiny-random", "--out", str(out), "--t2i", "3", "--edits", "2", "--steps", "2",
                  "--t2i-steps", "2", "--num-images", "2", "--reconstruction", "pixel", "--latent-mask-mode", "inside",
                  "--save-results", "--threads", "1"])
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
    assert report["edit_params"]["skip_fraction"] == 0.25  # no recommended settings: the paper's
    assert report["edit_params"]["latent_mask_mode"] == edits["latent_mask_mode"] == "inside"  # the flag's
    assert (out / "t2i.png").is_file() and (out / "edits.png").is_file()
    tasks = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    assert [t["task"] for t in tasks] == [0, 1] and [t["kind"] for t in tasks] == ["add", "replace"]
    assert all(len(t["results"]) == 2 for t in tasks)
    assert edits["all"]["best_of_n"] == np.mean([t["results"][0]["correct"] for t in tasks])
    assert (out / "edits-missed.png").is_file() == (edits["all"]["best_of_n"] < 1)
    saved = sorted(p.name for p in (out / "edits-results").iterdir())
    assert saved == ["000-1.png", "000-2.png", "001-1.png", "001-2.png"]
    assert PIL.Image.open(out / "edits-results" / "001-2.png").size == (64, 64)
