"""MMEJDConfig: documented fields, validation errors that name the field, save/load."""

import json

import pytest

from mme_jd.modeling.configuration_mme_jd import MMEJDConfig

BASE = {"model_type": "llava", "text_config": {"model_type": "llama", "hidden_size": 32}}


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("mode", "fast", "mode='fast' is not allowed; choose one of ['general', 'mid', 'mctd', 'mme_jd']"),
        ("correction", "quadratic", "correction='quadratic'"),
        ("head", "mlp", "head='mlp'"),
        ("text_counterfactual", "random", "text_counterfactual='random'"),
        ("image_counterfactual", "random", "image_counterfactual='random'"),
        ("image_fill", "noise", "image_fill='noise'"),
        ("other_modality", "drop", "other_modality='drop'"),
        ("expert_execution", "some", "expert_execution='some'"),
        ("autocast_dtype", "float64", "autocast_dtype='float64' is not allowed; choose one of [None, 'bfloat16'"),
        ("router_threshold", 1.5, "router_threshold=1.5 must be a number in [0.0, 1.0]"),
        ("text_mask_ratio", -0.1, "text_mask_ratio=-0.1"),
        ("lora_rank", 0, "lora_rank=0 must be a positive integer"),
        ("lambda_text", -1.0, "lambda_text=-1.0"),
        ("prompt_template", "no text here", "must contain '{text}'"),
        ("expert_temperatures", {"other": 1.0}, "unknown experts ['other']"),
        ("expert_temperatures", {"general": 0.0}, "must be > 0"),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(field, value, expected):
    with pytest.raises(ValueError) as error:
        MMEJDConfig(base_config=BASE, **{field: value})
    assert f"MMEJDConfig.{field}" in str(error.value)
    assert expected in str(error.value)


def test_label_words_must_match_the_labels():
    with pytest.raises(ValueError, match="label_words has 3 words but there are 2 labels"):
        MMEJDConfig(base_config=BASE, id2label={0: "a", 1: "b"}, label_words=["x", "y", "z"])
    with pytest.raises(ValueError, match="repeats a token"):
        MMEJDConfig(base_config=BASE, id2label={0: "a", 1: "b"}, label_token_ids=[5, 5])


def test_config_round_trip_keeps_every_field(tmp_path):
    config = MMEJDConfig(
        base_config=BASE, id2label={0: "neg", 1: "neu", 2: "pos"}, label_words=["bad", "ok", "good"],
        label_token_ids=[4, 5, 6], mode="mid", lambda_text=0.3, lambda_image=0.7, text_counterfactual="swap",
        expert_temperatures={"general": 2.0}, autocast_dtype="bfloat16",
    )
    config.save_pretrained(tmp_path)
    loaded = MMEJDConfig.from_pretrained(tmp_path)
    assert type(loaded.base_config).__name__ == "LlavaConfig"
    assert loaded.base_config.text_config.hidden_size == 32
    assert loaded.id2label == {0: "neg", 1: "neu", 2: "pos"} and loaded.label2id == {"neg": 0, "neu": 1, "pos": 2}
    for field in ("mode", "lambda_text", "lambda_image", "text_counterfactual", "label_token_ids",
                  "label_words", "autocast_dtype"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert loaded.expert_temperature("general") == 2.0 and loaded.expert_temperature("text_debias") == 1.0
    assert loaded.family.image_placeholder == "<image>"


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("cf_target", "flip", "cf_target='flip' is not allowed"),
        ("text_debias_objective", "x", "text_debias_objective='x' is not allowed"),
        ("image_counterfactual_weight", -1.0, "image_counterfactual_weight=-1.0 must be a number"),
        ("router_class_weights", [1.0], "router_class_weights needs 4 weights"),
    ],
)
def test_invalid_loss_settings_name_the_field(field, value, expected):
    from mme_jd.modeling.configuration_mme_jd import MMEJDLossSettings

    with pytest.raises(ValueError, match=f"MMEJDLossSettings.{field}") as error:
        MMEJDLossSettings(**{field: value})
    assert expected in str(error.value)


def test_config_holds_what_inference_reads_and_drops_the_fields_that_moved(tmp_path):
    """Training knobs and the constants are no config fields; a config that still names them
    (a config.json saved before they moved) loads without them."""
    from mme_jd.modeling.configuration_mme_jd import REMOVED_FIELDS

    fields = set(MMEJDConfig().to_dict())
    assert not fields & set(REMOVED_FIELDS)
    old = MMEJDConfig(base_config=BASE, mctd_image_weight=0.0, router_cost_tolerance=0.2,
                      expert_names=["general", "image_debias", "text_debias"], router_class_weights=[1, 2, 3, 4])
    assert not any(hasattr(old, name) for name in REMOVED_FIELDS)
    old.save_pretrained(tmp_path)
    assert not set(REMOVED_FIELDS) & set(json.loads((tmp_path / "config.json").read_text()))


def test_from_base_names_where_a_moved_field_went():
    from mme_jd.tiny import tiny_model

    with pytest.raises(ValueError, match=r"cf_target \(now MMEJDTrainingConfig.cf_target\)"):
        tiny_model(cf_target="uniform")
