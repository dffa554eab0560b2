"""bld.ranking: CLIP scoring with the background blacked out, best-first ranking, model loading errors."""

import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import SIZE, make_image, make_mask

from bld.ops.metrics import compute_metrics
from bld.ranking import CLIP_MEAN, CLIP_STD, ClipScorer, rank
from bld.testing.tiny_clip import tiny_clip

PROMPT = "a red apple on the table"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-clip")
    tiny_clip(folder)
    return folder


@pytest.fixture(scope="module")
def scorer(clip_folder):
    return ClipScorer.from_pretrained(clip_folder)


def results(n=4):
    return [make_image(seed=seed) for seed in range(n)]


def with_pixels(image, region, value):
    """A copy of `image` with the boolean `region` (H, W) set to `value` (RGB, uint8)."""
    array = np.asarray(image).copy()
    array[region] = value
    return PIL.Image.fromarray(array)


def test_rank_is_best_first_and_stable():
    assert rank([0.1, 0.5, 0.3]) == [1, 2, 0]
    assert rank([0.2, 0.5, 0.2, 0.5]) == [1, 3, 0, 2]
    assert rank([float("nan"), -0.3, 0.4]) == [2, 1, 0]
    assert rank([]) == []


def test_scores_are_cosines_and_ranking_sorts_them(scorer):
    mask = make_mask()
    scores = scorer.score(results(5), PROMPT, mask)
    assert len(scores) == 5 and all(isinstance(s, float) and -1 <= s <= 1 for s in scores)
    assert len(set(scores)) == 5  # distinct images, distinct scores
    order = rank(scores)
    assert sorted(order) == list(range(5))
    assert [scores[i] for i in order] == sorted(scores, reverse=True)
    assert scorer.score([], PROMPT, mask) == []


def test_score_equals_clip_forward_logits(scorer):
    """score() is the cosine that CLIPModel's own forward computes (logits / logit scale)."""
    image, mask = make_image(seed=3), make_mask()
    blacked = with_pixels(image, ~(np.asarray(mask) > 127), 0)
    tokens = scorer.tokenizer([PROMPT], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = scorer.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                           pixel_values=scorer.preprocess([blacked]))
        expected = float(out.logits_per_image[0, 0] / scorer.model.logit_scale.exp())
    assert scorer.score([image], PROMPT, mask)[0] == pytest.approx(expected, abs=1e-5)
    assert scorer.text_match(image, PROMPT, mask) == pytest.approx(expected, abs=1e-5)


def test_masked_scoring_ignores_background_but_not_the_edit(scorer):
    image, mask = make_image(), make_mask()
    inside = np.asarray(mask) > 127
    other_background = with_pixels(image, ~inside, (10, 200, 30))
    other_edit = with_pixels(image, inside, (10, 200, 30))
    base, same, changed = scorer.score([image, other_background, other_edit], PROMPT, mask)
    assert same == pytest.approx(base, abs=1e-6)
    assert abs(changed - base) > 1e-4
    # Masking = blacking out the outside: same as scoring the blacked-out image unmasked.
    assert scorer.score([with_pixels(image, ~inside, 0)], PROMPT, None)[0] == pytest.approx(base, abs=1e-6)
    # Without the mask the background does count.
    unmasked = scorer.score([image, other_background], PROMPT, None)
    assert abs(unmasked[0] - unmasked[1]) > 1e-4


def test_batches_and_text_match_agree(clip_folder, scorer):
    images, mask = results(5), make_mask()
    small_batches = ClipScorer(scorer.model, scorer.tokenizer, batch_size=2)
    assert small_batches.score(images, PROMPT, mask) == pytest.approx(scorer.score(images, PROMPT, mask), abs=1e-6)
    assert scorer.text_match(images[2], PROMPT, mask) == pytest.approx(scorer.score(images, PROMPT, mask)[2],
                                                                       abs=1e-6)


def test_preprocessing_matches_clip_image_processor(scorer):
    """Resize shorter side (bicubic, antialias), center crop, CLIP mean/std: as transformers' PIL processor."""
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    size = scorer.image_size
    processor = processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    image = PIL.Image.fromarray(np.asarray(make_image(size=(96, 64), seed=1)))  # not square: crop matters
    expected = processor(images=[image], return_tensors="pt")["pixel_values"]
    mine = scorer.preprocess([image])
    assert mine.shape == expected.shape == (1, 3, size, size)
    diff = (mine - expected).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1  # uint8 rounding and resampler details only


def test_score_rejects_mask_of_another_size(scorer):
    with pytest.raises(ValueError, match="mask is 32x32 but the image is 64x64"):
        scorer.score([make_image()], PROMPT, make_mask(size=(32, 32), box=(4, 4, 20, 20)))


def test_tiny_clip_round_trips_through_a_folder(clip_folder, scorer):
    config = scorer.model.config
    tokenizer = scorer.tokenizer
    assert config.text_config.vocab_size >= 520
    assert (config.text_config.bos_token_id, config.text_config.eos_token_id, config.text_config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert max(tokenizer(PROMPT)["input_ids"]) < config.text_config.vocab_size

    again = ClipScorer.from_pretrained(str(clip_folder))
    fresh = again.model.state_dict()
    for name, tensor in scorer.model.state_dict().items():
        assert torch.equal(tensor, fresh[name]), name
    images = results(3)
    assert again.score(images, PROMPT, make_mask()) == scorer.score(images, PROMPT, make_mask())


def test_from_pretrained_places_model_on_device_and_dtype(clip_folder):
    half = ClipScorer.from_pretrained(clip_folder, device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    full = ClipScorer.from_pretrained(clip_folder)
    images = results(2)
    assert half.score(images, PROMPT, make_mask()) == pytest.approx(full.score(images, PROMPT, make_mask()),
                                                                     abs=0.05)


def test_unreachable_hub_id_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as info:
        ClipScorer.from_pretrained("openai/clip-vit-base-patch16")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not load a CLIP model from 'openai/clip-vit-base-patch16': ")
    assert len(message) > len("could not load a CLIP model from 'openai/clip-vit-base-patch16': ") + 10


def test_missing_folder_and_non_clip_folder_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no such folder$"):
        ClipScorer.from_pretrained(tmp_path / "absent")
    from transformers import CLIPTextConfig, CLIPTextModel
    CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                                 vocab_size=1000)).save_pretrained(tmp_path / "text-only")
    with pytest.raises(ValueError) as info:
        ClipScorer.from_pretrained(tmp_path / "text-only")
    assert "\n" not in str(info.value) and "clip_text_model" in str(info.value)


def test_compute_metrics_adds_text_match(scorer):
    original, mask = make_image(), make_mask()
    result = with_pixels(original, np.asarray(mask) > 127, (200, 30, 30))
    metrics = compute_metrics(original, result, mask, prompt=PROMPT, scorer=scorer)
    assert set(metrics) == {"background_psnr", "background_ssim", "edge_delta_e", "text_match"}
    assert metrics["text_match"] == pytest.approx(scorer.text_match(result, PROMPT, mask), abs=1e-6)
    assert math.isinf(metrics["background_psnr"])
    assert SIZE == 64


def disc_image(width, height, center, radius=14, color=(220, 20, 20)):
    """A gray-noise image with a disc of `color` at `center` (x, y)."""
    rng = np.random.default_rng(0)
    array = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    array[(xx - center[0]) ** 2 + (yy - center[1]) ** 2 <= radius ** 2] = color
    return PIL.Image.fromarray(array)


def box_mask(width, height, box):
    array = np.zeros((height, width), np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = 255
    return PIL.Image.fromarray(array)


@pytest.mark.parametrize("size, center, box", [
    ((256, 128), (24, 64), (0, 30, 50, 98)),      # wide image, edit at its left end
    ((256, 128), (232, 64), (206, 30, 256, 98)),  # wide, right end
    ((128, 256), (64, 232), (30, 206, 98, 256)),  # tall, bottom end
])
def test_an_edit_at_the_end_of_a_long_image_is_seen(scorer, size, center, box):
    """The center square of a 256x128 image leaves out its ends: the edit there must still change the score."""
    mask = box_mask(*size, box)
    with_disc = disc_image(*size, center)
    without = disc_image(*size, center, color=(115, 115, 115))
    a, b = scorer.score([with_disc, without], PROMPT, mask)
    assert abs(a - b) > 1e-4


def test_the_view_is_the_square_that_holds_the_mask(scorer):
    image = disc_image(256, 128, (24, 64))
    mask = box_mask(256, 128, (0, 30, 50, 98))
    left_square = scorer.preprocess([image.crop((0, 0, 128, 128))], mask.crop((0, 0, 128, 128)))
    assert torch.equal(scorer.preprocess([image], mask), left_square)
    centered = box_mask(256, 128, (100, 30, 150, 98))  # box centered at x 125: the window starts at 61
    assert torch.equal(scorer.preprocess([image], centered),
                       scorer.preprocess([image.crop((61, 0, 189, 128))], centered.crop((61, 0, 189, 128))))


def test_a_crop_view_is_the_square_around_the_crop_box(scorer):
    """crop-and-stitch passes its crop box: CLIP sees the square around it, at the scale the model drew the
    edit, not the photo's short side (where a small edit on a big photo would be a few pixels)."""
    image = disc_image(384, 256, (300, 60), radius=10)
    mask = box_mask(384, 256, (290, 50, 310, 70))
    crop = (270, 30, 334, 94)  # a 64 px crop box around the mask
    seen = scorer.preprocess([image], mask, view=crop)
    assert torch.equal(seen, scorer.preprocess([image.crop(crop)], mask.crop(crop)))
    assert not torch.equal(seen, scorer.preprocess([image], mask))
    wide = (250, 40, 354, 80)  # a 104x40 box: a 104 px square centered on it
    assert torch.equal(scorer.preprocess([image], mask, view=wide),
                       scorer.preprocess([image.crop((250, 8, 354, 112))], mask.crop((250, 8, 354, 112))))
    result = compute_metrics(image, image, np.asarray(mask) > 0, prompt=PROMPT, scorer=scorer, windows=[crop])
    assert result["text_match"] == pytest.approx(scorer.score([image], PROMPT, mask, view=crop)[0], abs=1e-6)


def test_a_box_longer_than_the_short_side_is_letterboxed(scorer):
    image = disc_image(256, 64, (24, 32))
    mask = box_mask(256, 64, (0, 0, 200, 64))  # 200 px long: the view is 200 px square, black above and below
    padded_image, padded_mask = PIL.Image.new("RGB", (200, 200)), PIL.Image.new("L", (200, 200))
    padded_image.paste(image.crop((0, 0, 200, 64)), (0, 68))
    padded_mask.paste(mask.crop((0, 0, 200, 64)), (0, 68))
    assert torch.allclose(scorer.preprocess([image], mask), scorer.preprocess([padded_image], padded_mask),
                          atol=1e-6)


def test_square_images_are_seen_whole_as_before(scorer):
    image, mask = make_image(seed=2), make_mask()
    keep = np.asarray(mask.convert("L"))[..., None] >= 128
    blacked = PIL.Image.fromarray((np.asarray(image) * keep).astype(np.uint8))
    assert torch.allclose(scorer.preprocess([image], mask), scorer.preprocess([blacked]), atol=1e-6)
