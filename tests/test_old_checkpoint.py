"""A checkpoint saved by the code before issue 13 (config fields since moved or dropped, the router
as a positional nn.Sequential) still loads with today's code and gives the same logits."""

import json
from pathlib import Path

import datasets
import pytest
import torch
from conftest import TEXTS, random_images

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def old_model():
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    from transformers import AutoProcessor

    with pytest.warns(UserWarning, match="lacks"):  # the fixture keeps no remote code: it is loaded with today's
        model = MMEJDModel.from_pretrained(FIXTURES / "checkpoint_v0").eval()
    model.processor = AutoProcessor.from_pretrained(FIXTURES / "checkpoint_v0")
    return model


@pytest.mark.parametrize("mode", ["general", "mid", "mme_jd"])
def test_checkpoint_saved_by_the_old_code_gives_the_same_logits(old_model, mode):
    from mme_jd.inference import collect_outputs

    expected = json.loads((FIXTURES / "checkpoint_v0_expected.json").read_text())[mode]
    rows = datasets.Dataset.from_dict({"text": TEXTS, "image": random_images(len(TEXTS)), "label": [1, 0, 0, 1]})
    kwargs = {"counterfactual_parts": ("text", "image"), "text_counterfactual": "lexical"} if mode == "mid" else {}
    outputs = collect_outputs(old_model, old_model.processor, rows, mode=mode,
                              return_experts=mode == "mme_jd", **kwargs)
    for key, values in expected.items():
        torch.testing.assert_close(outputs[key].float(), torch.tensor(values).float(), rtol=1e-4, atol=1e-5,
                                   msg=lambda m, key=key: f"{mode} {key}: {m}")
    if mode == "mme_jd":  # the fixture routes rows both to the image and to the text expert
        assert set(expected["strategy"]) == {1, 2}


def test_old_config_fields_are_dropped_on_load(old_model, tmp_path):
    """The fixture's config.json holds every field that left MMEJDConfig (training knobs, the
    constants), so this test keeps meaning something; the loaded config has none of them, and a
    save writes none of them back."""
    from mme_jd.modeling.configuration_mme_jd import REMOVED_FIELDS

    saved = json.loads((FIXTURES / "checkpoint_v0" / "config.json").read_text())
    assert set(REMOVED_FIELDS) <= set(saved)
    assert not [name for name in REMOVED_FIELDS if hasattr(old_model.config, name)]
    old_model.config.save_pretrained(tmp_path)
    assert not set(REMOVED_FIELDS) & set(json.loads((tmp_path / "config.json").read_text()))


def test_old_checkpoint_saves_again_in_todays_format_and_reloads(old_model, tmp_path):
    from mme_jd.modeling.modeling_mme_jd import MMEJDModel

    old_model.save_pretrained(tmp_path / "again")
    from safetensors import safe_open

    with safe_open(tmp_path / "again" / "model.safetensors", "pt") as saved:  # the router's named layers
        assert sorted(k for k in saved.keys() if k.startswith("router.")) == [
            "router.hidden.bias", "router.hidden.weight", "router.out.bias", "router.out.weight"]
    again = MMEJDModel.from_pretrained(tmp_path / "again").eval()
    for (name, param), (again_name, again_param) in zip(old_model.state_dict().items(), again.state_dict().items()):
        assert name == again_name
        torch.testing.assert_close(param, again_param)
    assert again.config.router_threshold == pytest.approx(0.3)
    assert again.config.lambda_text == pytest.approx(0.4)


def test_a_folder_saved_before_image_less_rows_keeps_the_grey_stand_in(old_model):
    """Its config.json has no `image_less_rows`: rows without an image keep the stand-in image
    they were trained with, where a new model (from_base) makes them text only."""
    assert "image_less_rows" not in json.loads((FIXTURES / "checkpoint_v0" / "config.json").read_text())
    assert old_model.config.image_less_rows == "stand_in"
