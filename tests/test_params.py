"""EditParams: the one description of the edit's knobs, with ranges."""

import json

import pytest

from bld import EditParams


def test_defaults_follow_the_paper():
    p = EditParams()
    assert (p.num_inference_steps, p.skip_fraction, p.num_images) == (50, 0.25, 4)
    assert p.latent_mask_mode == "any" and p.background_noise == "fixed" and p.scheduler == "ddim"


@pytest.mark.parametrize("field,value,message", [
    ("num_inference_steps", 0, r"num_inference_steps=0 is out of range: it must lie in \[1, 1000\]"),
    ("num_inference_steps", 2.5, "num_inference_steps must be an integer"),
    ("guidance_scale", -1.0, r"guidance_scale=-1.0 is out of range"),
    ("guidance_scale", float("nan"), "guidance_scale must be a number, got NaN"),
    ("skip_fraction", 1.0, r"skip_fraction=1.0 is out of range: it must lie in \[0.0, 0.99\]"),
    ("num_images", 0, r"num_images=0 is out of range"),
    ("num_images", True, "num_images must be an integer"),
    ("seed", -5, r"seed=-5 is out of range"),
    ("latent_mask_mode", "bilinear", "latent_mask_mode='bilinear' is not one of any, nearest, inside, top-left"),
    ("background_noise", "sometimes", "background_noise='sometimes' is not one of fixed, fresh"),
    ("invert_mask", "yes", "invert_mask must be true or false"),
    ("prompt", 3, "prompt must be a string"),
])
def test_out_of_range_values_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        EditParams(**{field: value})


def test_json_round_trip():
    p = EditParams(prompt="a red star", seed=7, invert_mask=True, guidance_scale=3.0)
    assert EditParams.from_dict(json.loads(p.to_json())) == p


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown edit parameter.*strength"):
        EditParams.from_dict({"prompt": "x", "strength": 0.5})


def test_a_model_folder_recommends_defaults_that_are_validated(tmp_path):
    from bld.image_io import InputError
    from bld.model_defaults import EDIT_DEFAULTS_FILE, model_edit_defaults

    assert model_edit_defaults(str(tmp_path)) == {}
    assert model_edit_defaults("someone/some-hub-model") == {}
    (tmp_path / EDIT_DEFAULTS_FILE).write_text(json.dumps({"skip_fraction": 0.0, "background_noise": "fresh"}))
    assert model_edit_defaults(str(tmp_path)) == {"skip_fraction": 0.0, "background_noise": "fresh"}
    for bad, message in (('{"strength": 1}', "unknown edit parameter"), ('{"skip_fraction": 2}', "out of range"),
                         ("[1, 2]", "JSON object"), ("{", "Expecting")):
        (tmp_path / EDIT_DEFAULTS_FILE).write_text(bad)
        with pytest.raises(InputError, match=message):
            model_edit_defaults(str(tmp_path))
