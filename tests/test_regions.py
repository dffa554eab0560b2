"""Several regions in one edit, each with its own prompt: the layout (later regions win), the batched noise
prediction, exact background outside every region, the refusals, per-region strength and scores, and an oracle
that each region lands on its own prompt's answer."""

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import gen, make_image, make_mask
from diffusers import DDIMScheduler
from test_oracle_schedulers import noise_level

from bld.editing import params_from_metadata, result_metadata, run_edit
from bld.ops.blending import latent_mask
from bld.ops.regions import cell_owners, combine_region_noise, layout_regions
from bld.params import EditParams, Region

FAST = dict(num_inference_steps=4, guidance_scale=3.0)
LEFT, RIGHT, CORNER = (4, 4, 28, 28), (36, 4, 60, 28), (44, 20, 60, 44)  # boxes (left, top, right, bottom) in px


@pytest.fixture
def pipe(any_family):
    """Here `pipe` is every family's: SD, SDXL and the paper's LDM."""
    return any_family


def edit(pipe, image, masks, prompts, **kwargs):
    kwargs = {"generator": gen(0), **FAST, **kwargs}
    return pipe(prompts[0], image, masks[0], regions=list(prompts[1:]), region_masks=list(masks[1:]), **kwargs)


def source_latent(pipe, image, mask):
    return pipe.encode_source(pipe.prepare_image_and_mask(image, mask, None, None, False).image)


def cells(box, factor=2, size=32):
    """The latent cells (h, w) bool of a pixel box aligned to the cells."""
    out = torch.zeros(size, size, dtype=torch.bool)
    left, top, right, bottom = (v // factor for v in box)
    out[top:bottom, left:right] = True
    return out


# -- the layout --------------------------------------------------------------------------------------------

def test_later_regions_win_where_they_overlap_for_prompt_and_strength():
    a, b = np.zeros((4, 6), np.float32), np.zeros((4, 6), np.float32)
    a[:, :4], b[:, 2:] = 1.0, 1.0
    layout = layout_regions([a, b], [1.0, 0.5])
    assert layout.owner.tolist()[0] == [0, 0, 1, 1, 1, 1]
    assert layout.schedule[0].tolist() == [1, 1, 0.5, 0.5, 0.5, 0.5] and layout.timed and not layout.soft
    with pytest.raises(ValueError, match="region 1 is covered entirely by later regions"):
        layout_regions([b, a + b], [1.0, 1.0])


def test_cell_owners_partition_the_grid_and_a_shared_cell_goes_to_the_later_region():
    """A cell shared by two regions' pixels is the later region's, one no region touches the nearest's."""
    owner = np.array([[0, 0, 1, 1, 1, 2, 2, 2, -1, -1]] * 2, np.int16)  # cells of 2 px: the third is 1's and 2's
    owners = cell_owners(owner, 3, (1, 5))
    assert torch.equal(owners.sum(0), torch.ones(1, 1, 5))
    assert [int(owners[:, 0, 0, k].argmax()) for k in range(5)] == [0, 1, 2, 2, 2]  # the last: no one's, the nearest


def test_combined_noise_is_each_owners_prediction_value_for_value():
    noise = torch.randn(3 * 2, 4, 2, 4)  # 3 regions x 2 results, region-major
    owners = torch.zeros(3, 1, 2, 4)
    owners[0, ..., 0], owners[1, ..., 1:3], owners[2, ..., 3] = 1, 1, 1
    combined = combine_region_noise(noise, owners)
    assert torch.equal(combined[..., 0], noise[0:2, ..., 0]) and torch.equal(combined[..., 1:3], noise[2:4, ..., 1:3])
    assert torch.equal(combined[..., 3], noise[4:6, ..., 3])


# -- params ------------------------------------------------------------------------------------------------

def test_regions_round_trip_through_json_and_are_validated():
    params = EditParams(prompt="a red star", regions=[{"prompt": "a blue moon", "strength": 0.5},
                                                      Region("a tree", negative_prompt="dark")])
    assert params.regions == (Region("a blue moon", None, 0.5), Region("a tree", "dark", 1.0))
    assert EditParams.from_dict(json.loads(params.to_json())) == params
    for bad, message in (([{"prompt": "x", "strength": 0}], r"strength must be a number in \(0, 1\]"),
                         ([{"prompt": "x", "weight": 1}], "unknown region field.*weight"),
                         ([{"prompt": 3}], "prompt must be a string"), ("a moon", "must be a list")):
        with pytest.raises(ValueError, match=message):
            EditParams(regions=bad)


# -- edits -------------------------------------------------------------------------------------------------

def test_two_regions_change_inside_each_and_keep_the_source_latent_outside_both(pipe, image):
    masks = [make_mask(box=LEFT), make_mask(box=RIGHT)]
    latents = edit(pipe, image, masks, ["a red star", "a blue moon"], output_type="latent",
                   num_images_per_prompt=2, generator=[gen(1), gen(2)]).images
    union = PIL.Image.fromarray(np.maximum(np.asarray(masks[0]), np.asarray(masks[1])))
    z0 = source_latent(pipe, image, union)
    prepared = pipe.prepare_image_and_mask(image, union, None, None, False)
    outside = (latent_mask(prepared.mask, tuple(z0.shape[-2:]), "any") == 0).expand_as(latents)
    assert torch.equal(latents[outside], z0.expand_as(latents)[outside])
    for box in (LEFT, RIGHT):
        inside = cells(box)
        assert not torch.allclose(latents[..., inside], z0.expand_as(latents)[..., inside], atol=1e-3)


def test_three_regions_in_pixels_outside_every_region_are_the_input(sd_pipe, image):
    masks = [make_mask(box=LEFT), make_mask(box=RIGHT), make_mask(box=(8, 40, 30, 60))]
    out = np.asarray(edit(sd_pipe, image, masks, ["a red star", "a blue moon", "a green tree"]).images[0]) / 255
    source = np.asarray(image) / 255
    union = np.max([np.asarray(m) for m in masks], axis=0) > 0
    assert np.array_equal(out[~union], source[~union])
    for m in masks:
        assert np.abs(out[np.asarray(m) > 0] - source[np.asarray(m) > 0]).mean() > 0.01


def test_a_regions_prompt_steers_its_cells(sd_pipe, image):
    """Another prompt for the second region changes its cells; which prediction each cell takes is the
    oracle's test below (with a real UNet every cell sees the whole latent, so the others move a little)."""
    masks = [make_mask(box=LEFT), make_mask(box=RIGHT)]
    a = edit(sd_pipe, image, masks, ["a red star", "a blue moon"], output_type="latent").images
    b = edit(sd_pipe, image, masks, ["a red star", "a green leaf"], output_type="latent").images
    right, left = cells(RIGHT), cells(LEFT)
    assert (a - b)[..., right].abs().mean() > 3 * (a - b)[..., left].abs().mean()


def test_same_seed_same_result_other_seed_other_result(pipe, image):
    masks = [make_mask(box=LEFT), make_mask(box=RIGHT)]
    a, b, c = (np.asarray(edit(pipe, image, masks, ["a red star", "a blue moon"], generator=gen(s)).images[0])
               for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_one_region_runs_the_single_prompt_path_untouched(sd_pipe, image, mask, monkeypatch):
    """No regions: the UNet sees the negative and the conditional row only, nothing is recombined, and giving
    an empty region list changes no bit."""
    seen = []
    forward = sd_pipe.unet.forward

    def spy(sample, timestep, encoder_hidden_states=None, **kwargs):
        seen.append(encoder_hidden_states.shape[0])
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

    monkeypatch.setattr(sd_pipe.unet, "forward", spy)
    monkeypatch.setattr(type(sd_pipe), "regional_noise_predictor", lambda *a, **k: pytest.fail("recombined"))
    plain = sd_pipe("a red star", image, mask, generator=gen(0), output_type="np", **FAST).images
    empty = sd_pipe("a red star", image, mask, generator=gen(0), output_type="np", regions=[], region_masks=[],
                    **FAST).images
    assert set(seen) == {2} and np.array_equal(plain, empty)


def test_regions_batch_their_prompts_through_one_unet_call(sdxl_pipe, image):
    seen = []
    forward = sdxl_pipe.unet.forward

    def spy(sample, timestep, encoder_hidden_states=None, added_cond_kwargs=None, **kwargs):
        seen.append((sample.shape[0], encoder_hidden_states.shape[0], added_cond_kwargs["time_ids"].shape[0]))
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                       added_cond_kwargs=added_cond_kwargs, **kwargs)

    sdxl_pipe.unet.forward = spy
    try:
        masks = [make_mask(box=LEFT), make_mask(box=RIGHT), make_mask(box=(8, 40, 30, 60))]
        edit(sdxl_pipe, image, masks, ["a red star", "a blue moon", "a tree"], output_type="latent",
             num_images_per_prompt=2, generator=[gen(0), gen(1)])
    finally:
        del sdxl_pipe.unet.forward
    assert set(seen) == {(12, 12, 12)}  # 3 regions x 2 results x (negative, conditional), one call per step


@pytest.mark.parametrize("case, message", [
    ("empty", "region 2's mask is empty"),
    ("aspect", "region 2: mask is 128x64 but image is 64x64"),
    ("count", "got 1 region masks for 2 regions"),
    ("invert", "invert_mask does not apply to several regions"),
    ("covered", "region 1 is covered entirely by later regions"),
])
def test_bad_regions_are_refused_by_number(sd_pipe, image, case, message):
    prompts, masks, extra = ["a red star", "a blue moon"], [make_mask(box=LEFT), make_mask(box=RIGHT)], {}
    if case == "empty":
        masks[1] = PIL.Image.new("L", (64, 64), 0)
    elif case == "aspect":
        masks[1] = make_mask((128, 64), box=(4, 4, 40, 20))
    elif case == "count":
        prompts.append("a tree")
    elif case == "invert":
        extra["invert_mask"] = True
    elif case == "covered":
        masks[1] = make_mask(box=(0, 0, 40, 40))
    with pytest.raises(ValueError, match=message):
        edit(sd_pipe, image, masks, prompts, **extra)


def test_regions_take_one_main_prompt(sd_pipe, image):
    with pytest.raises(ValueError, match="an edit with regions takes one main prompt"):
        sd_pipe(["a red star", "a cat"], image, make_mask(box=LEFT), regions=["a blue moon"],
                region_masks=[make_mask(box=RIGHT)], **FAST)


def test_a_weaker_region_joins_later(sd_pipe, image):
    """Strength 0.5 of 8 kept steps: the region's cells join the blended mask from step 4 on, the main
    region's from step 0."""
    seen = []

    def record(pipe, i, t, state):
        seen.append(state["mask"][0, 0].bool().clone())
        return {}

    sd_pipe(("a red star"), image, make_mask(box=LEFT), regions=[Region("a blue moon", strength=0.5)],
            region_masks=[make_mask(box=RIGHT)], generator=gen(0), num_inference_steps=8, skip_fraction=0.0,
            guidance_scale=3.0, output_type="latent", callback_on_step_end=record,
            callback_on_step_end_tensor_inputs=["latents", "mask"])
    left, right = cells(LEFT), cells(RIGHT)
    assert len(seen) == 8 and all(m[left].all() for m in seen)
    assert [bool(m[right].any()) for m in seen] == [False] * 4 + [True] * 4
    assert all(m[right].all() for m in seen[4:])


def test_regions_far_apart_are_edited_in_crops_of_their_own(sd_pipe):
    image = make_image((320, 192))
    masks = [make_mask((320, 192), (8, 8, 40, 40)), make_mask((320, 192), (272, 144, 312, 184))]
    output = edit(sd_pipe, image, masks, ["a red star", "a blue moon"])
    assert len(output.crops) == 2
    source = np.asarray(image) / 255
    union = np.max([np.asarray(m) for m in masks], axis=0) > 0
    out = np.asarray(output.images[0]) / 255
    assert np.array_equal(out[~union], source[~union])
    assert all(np.abs(out[np.asarray(m) > 0] - source[np.asarray(m) > 0]).mean() > 0.01 for m in masks)


# -- the oracle --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("guidance_cutoff", [1.0, 0.5])
def test_a_perfect_denoiser_lands_each_region_on_its_own_prompts_latent(sd_pipe, image, monkeypatch,
                                                                         guidance_cutoff):
    """A stand-in UNet that knows, for each prompt, the exact noise towards that prompt's clean latent
    (it tells the prompts apart by their embeddings; each region's negative prompt points at its region's
    latent, so guidance changes nothing): every cell ends at its own region's latent, the later region's
    where two overlap, and outside every region at the source latent; also when guidance stops half-way
    and only the conditional rows run."""
    prompts = [("a red star", "blurry"), ("a blue moon", "dark"), ("a green tree", "noisy")]
    masks = [make_mask(box=LEFT), make_mask(box=RIGHT), make_mask(box=CORNER)]
    original = sd_pipe.scheduler
    sd_pipe.scheduler = DDIMScheduler.from_config(original.config, set_alpha_to_one=True)
    z0 = source_latent(sd_pipe, image, masks[0])
    targets = [torch.randn(z0.shape, generator=gen(10 + k)) * 0.8 for k in range(3)]
    known = []
    for (text, negative), target in zip(prompts, targets):
        for words in (text, negative):
            embedding = sd_pipe.encode_prompt(words, "cpu", 1, False)[0][0]
            known.append((embedding, target[0]))

    def forward(sample, timestep, encoder_hidden_states=None, return_dict=True, **kwargs):
        abar = noise_level(sd_pipe.scheduler, timestep)
        rows = [min(known, key=lambda k: float((k[0] - row).abs().max()))[1] for row in encoder_hidden_states]
        answer = torch.stack(rows).to(sample.dtype)
        return ((sample - math.sqrt(abar) * answer) / math.sqrt(1 - abar),)

    monkeypatch.setattr(sd_pipe.unet, "forward", forward)
    try:
        latents = sd_pipe(prompts[0][0], image, masks[0], negative_prompt=prompts[0][1],
                          regions=[Region(t, negative_prompt=n) for t, n in prompts[1:]], region_masks=masks[1:],
                          num_inference_steps=8, skip_fraction=0.0, guidance_scale=5.0, generator=gen(3),
                          output_type="latent", crop="off", guidance_cutoff=guidance_cutoff).images
    finally:
        sd_pipe.scheduler = original
    owned = [cells(LEFT), cells(RIGHT) & ~cells(CORNER), cells(CORNER)]
    for own, target in zip(owned, targets):
        assert (latents - target)[..., own].abs().max() < 1e-3
    outside = ~(owned[0] | owned[1] | owned[2])
    assert torch.equal(latents[..., outside], z0[..., outside])


# -- scores and metadata -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    from bld.ranking import ClipScorer
    from bld.testing.tiny_clip import tiny_clip

    folder = tmp_path_factory.mktemp("clip")
    tiny_clip(folder)
    return ClipScorer.from_pretrained(folder)


def test_each_region_is_scored_on_its_own_prompt_and_a_result_by_its_worst_region(sd_pipe, image, scorer):
    masks = [make_mask(box=LEFT), make_mask(box=RIGHT)]
    params = EditParams(prompt="a red star", regions=[Region("a blue moon")], num_images=3, seed=5, **FAST)
    results = run_edit(sd_pipe, image, masks[0], params, scorer, region_masks=masks[1:])
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    for result in results:
        assert len(result.region_scores) == 2 and result.score == min(result.region_scores)
        assert result.metrics["text_match"] == pytest.approx(result.score, abs=1e-4)
        assert result.metrics["background_psnr"] == float("inf")  # outside both regions: the input's pixels
        own = scorer.text_match(result.image, "a blue moon", np.asarray(masks[1]) > 0)
        assert result.region_scores[1] == pytest.approx(own, abs=1e-4)
        record = json.loads(result_metadata(params, result, "tiny-random")["bld"])
        assert record["region_scores"] == result.region_scores
        remade = params_from_metadata(result_metadata(params, result, "tiny-random"))
        assert remade.regions == params.regions and remade.seed == result.seed


def test_a_result_remakes_from_its_metadata_and_the_masks(sd_pipe, image):
    masks = [make_mask(box=LEFT), make_mask(box=RIGHT)]
    params = EditParams(prompt="a red star", regions=[Region("a blue moon", strength=0.75)], num_images=2, seed=8,
                        **FAST)
    second = run_edit(sd_pipe, image, masks[0], params, region_masks=masks[1:])[1]
    remade = params_from_metadata(result_metadata(params, second, "tiny-random"))
    (again,) = run_edit(sd_pipe, image, masks[0], remade, region_masks=masks[1:])
    # a batch of two and a run of one may round differently in BLAS: one 8-bit level at most, not another edit
    difference = np.abs(np.asarray(again.image, dtype=int) - np.asarray(second.image, dtype=int))
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_with_crops_each_region_is_scored_through_the_crop_that_holds_it(sd_pipe, scorer):
    image = make_image((320, 192))
    masks = [make_mask((320, 192), (8, 8, 40, 40)), make_mask((320, 192), (272, 144, 312, 184))]
    params = EditParams(prompt="a red star", regions=[Region("a blue moon")], num_images=2, seed=1, **FAST)
    results = run_edit(sd_pipe, image, masks[0], params, scorer, region_masks=masks[1:])
    boxes = [tuple(c["box"]) for c in results[0].crops]
    assert len(boxes) == 2
    for result in results:
        for k, (mask, prompt) in enumerate(zip(masks, ["a red star", "a blue moon"])):
            pixels = np.asarray(mask) > 0
            box = next(b for b in boxes if pixels[b[1]:b[3], b[0]:b[2]].any())
            assert result.region_scores[k] == pytest.approx(scorer.text_match(result.image, prompt, pixels, box),
                                                            abs=1e-4)
        assert result.metrics["text_match"] == pytest.approx(result.score, abs=1e-4)
