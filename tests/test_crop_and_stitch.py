"""Crop-and-stitch: the box math, and edits of large images through crops at the model's native size."""

import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import gen, make_image, make_mask

from bld.editing import result_metadata, run_edit
from bld.ops.cropping import MAX_CROPS, buckets, fit_crop, nearest_bucket, overlap, part_boxes, plan_crops
from bld.ops.metrics import compute_metrics
from bld.params import EditParams

FAST = dict(num_inference_steps=4, guidance_scale=3.0)


def region(size, *boxes):
    """A bool (H, W) mask with the given (left, top, right, bottom) boxes True."""
    width, height = size
    mask = np.zeros((height, width), bool)
    for left, top, right, bottom in boxes:
        mask[top:bottom, left:right] = True
    return mask


def contains(outer, inner):
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


# -- box math ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("native,step", [(512, 64), (768, 64), (1024, 64), (64, 16), (64, 4)])
def test_buckets_are_native_area_multiples_of_the_step(native, step):
    sizes = buckets(native, step)
    assert (native, native) in sizes
    for w, h in sizes:
        assert w % step == 0 and h % step == 0
        assert 0.8 * native**2 <= w * h <= native**2
        assert max(w / h, h / w) <= 2.5
        assert (h, w) in sizes  # portrait and landscape alike
    assert len(sizes) <= 21  # a small fixed set: compiled graphs and caches are reused


def test_nearest_bucket_follows_the_aspect_ratio():
    sizes = buckets(512, 64)
    assert nearest_bucket(1.0, sizes) == (512, 512)
    assert nearest_bucket(16 / 9, sizes) == (640, 384)
    assert nearest_bucket(9 / 16, sizes) == (384, 640)
    assert nearest_bucket(10.0, sizes) == (768, 320)  # the longest there is


def test_crop_is_padded_grown_to_the_bucket_aspect_and_kept_inside_the_image():
    sizes = buckets(512, 64)
    part = (2000, 1000, 2400, 1400)  # a 400 px square mask in a 6000x4000 photo
    crop = fit_crop(part, (6000, 4000), sizes, padding=0.25, min_side=256)
    assert crop.box == (1900, 900, 2500, 1500)  # 100 px of context on each side
    assert (crop.width, crop.height) == (512, 512)
    wide = fit_crop((100, 100, 900, 300), (6000, 4000), sizes, padding=0.25, min_side=256)
    w, h = wide.box_size
    assert contains(wide.box, (100 - 200, 100 - 200, 900 + 200, 300 + 200)) is False  # clipped at the border
    assert wide.box[0] == 0 and wide.box[1] == 0  # shifted into the image
    assert contains(wide.box, (100, 100, 900, 300))
    assert abs(math.log(w / h / (wide.width / wide.height))) < 0.15  # the bucket's aspect, nearly
    corner = fit_crop((5900, 3950, 6000, 4000), (6000, 4000), sizes, padding=0.25, min_side=256)
    assert corner.box[2] == 6000 and corner.box[3] == 4000 and corner.box_size[0] >= 256


def test_part_boxes_are_exact_on_a_large_mask():
    mask = region((8000, 6000), (1234, 2345, 1300, 2400), (7000, 10, 7999, 20))
    assert sorted(part_boxes(mask)) == [(1234, 2345, 1300, 2400), (7000, 10, 7999, 20)]


def test_an_image_no_larger_than_native_is_edited_whole():
    crops = plan_crops(region((64, 48), (10, 10, 20, 20)), native=64, step=4)
    assert len(crops) == 1 and crops[0].box == (0, 0, 64, 48)
    assert (crops[0].width, crops[0].height) == nearest_bucket(64 / 48, buckets(64, 4))
    square = plan_crops(region((64, 64), (1, 1, 3, 3)), native=64, step=4)
    assert [(c.box, c.width, c.height) for c in square] == [((0, 0, 64, 64), 64, 64)]


def test_parts_far_apart_get_a_crop_each_and_near_ones_share_one():
    size = (6000, 4000)
    far = plan_crops(region(size, (500, 500, 800, 800), (5000, 3000, 5300, 3300)), native=512, step=64)
    assert len(far) == 2 and not overlap(far[0].box, far[1].box)
    near = plan_crops(region(size, (500, 500, 800, 800), (900, 500, 1200, 800)), native=512, step=64)
    assert len(near) == 1 and contains(near[0].box, (500, 500, 1200, 800))


def test_many_parts_share_one_crop_and_a_crop_covering_most_means_the_whole_image():
    size = (6000, 4000)
    specks = [(300 + 600 * k, 2000, 310 + 600 * k, 2010) for k in range(MAX_CROPS + 1)]
    crops = plan_crops(region(size, *specks), native=512, step=64)
    assert len(crops) == 1 and contains(crops[0].box, (300, 2000, 310 + 600 * MAX_CROPS, 2010))
    big = plan_crops(region(size, (500, 500, 5500, 3500)), native=512, step=64)
    assert [c.box for c in big] == [(0, 0, 6000, 4000)]


def test_crops_never_overlap_so_no_pixel_is_edited_twice():
    rng = np.random.default_rng(0)
    for _ in range(20):
        boxes = []
        for _ in range(rng.integers(1, 6)):
            x, y = int(rng.integers(0, 5800)), int(rng.integers(0, 3800))
            boxes.append((x, y, x + int(rng.integers(5, 200)), y + int(rng.integers(5, 200))))
        mask = region((6000, 4000), *boxes)
        crops = plan_crops(mask, native=512, step=64)
        for i, a in enumerate(crops):
            assert all(not overlap(a.box, b.box) for b in crops[i + 1:])
        covered = np.zeros_like(mask)
        for c in crops:
            covered[c.box[1]:c.box[3], c.box[0]:c.box[2]] = True
        assert covered[mask].all()  # every masked pixel lies in a crop


# -- edits -------------------------------------------------------------------------------------------------

def big_scene(size=(400, 300)):
    image = make_image(size)
    mask = make_mask(size, (60, 50, 100, 90))
    return image, mask


def test_crop_edit_keeps_every_pixel_outside_the_mask_and_the_input_size(sd_pipe):
    image, mask = big_scene()
    out = sd_pipe("a red star", image, mask, generator=gen(0), **FAST)
    assert out.images[0].size == image.size
    assert len(out.crops) == 1 and out.crops[0]["box"] != [0, 0, 400, 300]
    a, b, m = np.asarray(out.images[0]), np.asarray(image), np.asarray(mask) > 0
    assert (a[~m] == b[~m]).all()
    assert (a[m] != b[m]).any()


def test_outside_the_crop_nothing_is_touched_even_without_reconstruction(sd_pipe):
    image, mask = big_scene()
    out = sd_pipe("a red star", image, mask, generator=gen(0), reconstruction="none", output_type="np", **FAST)
    left, top, right, bottom = out.crops[0]["box"]
    outside = np.ones((300, 400), bool)
    outside[top:bottom, left:right] = False
    source = np.asarray(image, dtype=np.float32) / 255
    assert np.array_equal(out.images[0][outside], source[outside])
    inside_box = ~outside & ~(np.asarray(mask) > 0)
    assert not np.allclose(out.images[0][inside_box], source[inside_box], atol=1e-3)  # re-decoded there


def test_the_crop_is_edited_at_the_native_size(sd_pipe):
    image, mask = big_scene()
    seen = []
    sd_pipe("a red star", image, mask, generator=gen(0), callback_on_step_end=lambda p, i, t, s: seen.append(
        tuple(s["latents"].shape[-2:])) or {}, **FAST)
    native = sd_pipe.native_size  # 64 for the tiny UNet: sample size 32 x VAE factor 2
    assert native == 64
    h, w = seen[0]
    assert 0.8 * native**2 <= (h * 2) * (w * 2) <= native**2


@pytest.mark.parametrize("kind", ["array", "tensor"])
def test_crop_edit_of_arrays_and_tensors(sd_pipe, kind):
    image, mask = big_scene()
    source = np.asarray(image, dtype=np.float32) / 255
    outside = np.asarray(mask) == 0
    if kind == "array":
        out = sd_pipe("a red star", source, np.asarray(mask), generator=gen(0), output_type="np", **FAST).images[0]
    else:
        tensor = torch.from_numpy(source).permute(2, 0, 1)[None]
        out = sd_pipe("a red star", tensor, torch.from_numpy(np.array(mask))[None, None] / 255, generator=gen(0),
                      output_type="pt", **FAST).images[0].permute(1, 2, 0).numpy()
    assert out.shape == (300, 400, 3)
    np.testing.assert_allclose(out[outside], source[outside], atol=1e-6)
    assert not np.allclose(out[~outside], source[~outside], atol=1e-2)


def test_crop_off_is_the_whole_image_algorithm(sd_pipe):
    """crop='off' runs the whole-image steps, at the image's own size, as before crop-and-stitch existed."""
    image, mask = big_scene((96, 72))
    out = sd_pipe("a red star", image, mask, generator=gen(3), crop="off", output_type="np", **FAST).images
    prepared = sd_pipe.prepare_image_and_mask(image, mask, None, None, False)
    embeds = torch.cat(sd_pipe.encode_prompt("a red star", "cpu", 1, True, None)[::-1])
    z0, latent_mask = sd_pipe.source_latent_and_mask(prepared, 1, "any", "cpu", embeds.dtype)
    timesteps = sd_pipe.blended_timesteps(4, 0.25, "cpu")
    predict = sd_pipe.guided_noise_predictor({"prompt_embeds": embeds}, lambda x, t, c: sd_pipe.unet(
        x, t, encoder_hidden_states=c["prompt_embeds"], return_dict=False)[0], 3.0)
    latents = sd_pipe.blended_denoise(z0, latent_mask, timesteps, predict, gen(3), fresh_noise=False)
    from bld.pipelines.blended import Finishing

    expected = sd_pipe.finish(latents, prepared, "np", "a red star", Finishing("pixel"), embeds.dtype).images
    assert z0.shape[-2:] == (36, 48)  # the image's own size / VAE factor 2
    assert np.array_equal(out, expected)


def test_crop_auto_equals_crop_off_on_a_native_size_image(sd_pipe, image):
    mask = make_mask()
    auto = sd_pipe("a red star", image, mask, generator=gen(1), output_type="np", **FAST)
    off = sd_pipe("a red star", image, mask, generator=gen(1), output_type="np", crop="off", **FAST)
    assert auto.crops == off.crops == [{"box": [0, 0, 64, 64], "size": [64, 64]}]
    assert np.array_equal(auto.images, off.images)


def two_far_parts(size=(600, 400)):
    image = make_image(size)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[40:70, 40:70] = 255
    m[320:350, 520:560] = 255
    return image, PIL.Image.fromarray(m)


def test_parts_far_apart_are_edited_in_their_own_crops_and_a_batch_equals_single_runs(sd_pipe):
    image, mask = two_far_parts()
    batch = sd_pipe("a red star", image, mask, generator=[gen(5), gen(6)], num_images_per_prompt=2,
                    output_type="np", **FAST)
    assert len(batch.crops) == 2
    single = sd_pipe("a red star", image, mask, generator=gen(6), output_type="np", **FAST)
    np.testing.assert_allclose(batch.images[1], single.images[0], atol=1e-5)
    again = sd_pipe("a red star", image, mask, generator=gen(6), output_type="np", **FAST)
    assert np.array_equal(single.images, again.images)  # same seed, same result
    with pytest.raises(ValueError, match="2 crops: pass crop='off'"):
        sd_pipe("a red star", image, mask, generator=gen(0), output_type="latent", **FAST)


def test_sdxl_edits_through_crops(sdxl_pipe):
    image, mask = two_far_parts()
    out = sdxl_pipe("a red star", image, mask, generator=gen(0), **FAST)
    a, b, m = np.asarray(out.images[0]), np.asarray(image), np.asarray(mask) > 0
    assert out.images[0].size == image.size and (a[~m] == b[~m]).all() and len(out.crops) == 2


@pytest.mark.parametrize("reconstruction", ["poisson", "latent", "decoder"])
def test_every_reconstruction_works_on_the_crop(sd_pipe, reconstruction):
    image, mask = big_scene()
    out = sd_pipe("a red star", image, mask, generator=gen(0), reconstruction=reconstruction,
                  reconstruction_steps=2, **FAST)
    a, b, m = np.asarray(out.images[0]), np.asarray(image), np.asarray(mask) > 0
    assert out.images[0].size == image.size
    if reconstruction != "poisson":  # Poisson blends the edit into the input; outside the mask it is the input
        assert (a[~m] == b[~m]).all()
    left, top, right, bottom = out.crops[0]["box"]
    keep = np.ones_like(m)
    keep[top:bottom, left:right] = False
    assert (a[keep] == b[keep]).all()


def test_explicit_size_replaces_the_bucket(sd_pipe):
    image, mask = big_scene()
    out = sd_pipe("a red star", image, mask, generator=gen(0), width=96, height=96, **FAST)
    assert out.crops[0]["size"] == [96, 96] and out.images[0].size == image.size
    one_side = sd_pipe("a red star", image, mask, generator=gen(0), width=96, **FAST)
    box_w, box_h = np.diff(np.reshape(one_side.crops[0]["box"], (2, 2)), axis=0)[0]
    assert one_side.crops[0]["size"][0] == 96
    assert abs(one_side.crops[0]["size"][1] - 96 * box_h / box_w) <= 2


def test_windowed_metrics_equal_the_full_image_metrics(sd_pipe):
    image, mask = two_far_parts()
    result = sd_pipe("a red star", image, mask, generator=gen(0), reconstruction="none", **FAST)
    boxes = [tuple(c["box"]) for c in result.crops]
    full = compute_metrics(image, result.images[0], mask)
    windowed = compute_metrics(image, result.images[0], mask, windows=boxes)
    assert full.keys() == windowed.keys()
    for key in full:
        assert windowed[key] == pytest.approx(full[key], rel=1e-9, abs=1e-12), key


def test_a_6000x4000_photo_with_a_small_mask(sd_pipe):
    """A 24 MP photo: the edit works on a 512-ish crop, so it takes seconds (about 3 s here), and every pixel
    outside the mask is the photo's."""
    width, height = 6000, 4000
    rng = np.random.default_rng(0)
    photo = PIL.Image.fromarray(rng.integers(0, 256, (height // 50, width // 50, 3), dtype=np.uint8)).resize(
        (width, height))
    m = np.zeros((height, width), np.uint8)
    m[1000:1400, 2000:2400] = 255
    mask = PIL.Image.fromarray(m)
    params = EditParams(prompt="a red star", num_inference_steps=4, num_images=1, seed=0, guidance_scale=3.0)
    (result,) = run_edit(sd_pipe, photo, mask, params)
    assert result.image.size == (width, height)
    a, b, inside = np.asarray(result.image), np.asarray(photo), m > 0
    assert (a[~inside] == b[~inside]).all() and (a[inside] != b[inside]).any()
    assert result.metrics["background_psnr"] == math.inf and result.metrics["background_ssim"] == 1.0
    record = result_metadata(params, result, "tiny")
    assert '"crops": [{"box": [1900, 900, 2500, 1500], "size": [64, 64]}]' in record["bld"]


def test_ranking_sees_the_square_around_the_crops(sd_pipe, tmp_path):
    from bld.ranking import ClipScorer
    from bld.testing.tiny_clip import tiny_clip

    tiny_clip(tmp_path / "clip")
    scorer = ClipScorer.from_pretrained(tmp_path / "clip")
    image, mask = big_scene()
    params = EditParams(prompt="a red star", num_inference_steps=4, num_images=3, seed=0, guidance_scale=3.0)
    results = run_edit(sd_pipe, image, mask, params, scorer=scorer)
    box = tuple(results[0].crops[0]["box"])
    region = np.asarray(mask) > 0
    view = scorer.score([r.image for r in results], "a red star", region, view=box)
    assert [r.score for r in results] == pytest.approx(view, abs=1e-6)
    assert [r.score for r in results] == sorted(view, reverse=True)
    assert [r.metrics["text_match"] for r in results] == pytest.approx(view, abs=1e-6)
    whole = scorer.score([r.image for r in results], "a red star", region)
    assert not np.allclose(whole, view, atol=1e-4)  # the photo's short side would be another view
