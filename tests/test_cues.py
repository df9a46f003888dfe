"""Shortcut finder, declared cues and their groups, and the cue-aware counterfactual builders."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from mme_jd.cues import (NO_CUE_Z, Cue, add_cue_columns, cue_flags, cue_group_ids, cue_group_names, find_cues,
                         format_cue_table, load_cues, parse_cues, text_associations, tokenize, write_cue_report)
from mme_jd.data.collator import CounterfactualTripleCollator
from mme_jd.data.real import default_data_dir
from mme_jd.data.synthetic import make_synthetic_benchmark, make_synthetic_split
from mme_jd.modeling.configuration_mme_jd import MMEJDConfig
from mme_jd.modeling.counterfactual_mme_jd import (cue_only_text_counterfactual, cue_only_token_masks,
                                                   cue_removed_text_counterfactual, text_counterfactuals)

COLOUR_STATISTICS = {"hue_cos", "hue_sin", "mean_red", "mean_blue"}


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_benchmark(num_train=800, seed=2, splits=["train", "train_cue_free"])


# ---------------------------------------------------------------------------- finder


def test_finder_ranks_irony_and_the_background_hue_first_on_synthetic(synthetic, tmp_path):
    report = find_cues(synthetic, split="train", top=10, progress=False)
    first = report["tokens"][0]
    assert first["token"] == "#irony" and first["label"] == "sarcastic" and first["z"] > 2 * NO_CUE_Z
    assert first["p_label_given_token"] > 0.8 > first["base_rate"] + 0.2
    assert report["image"][0]["statistic"] in COLOUR_STATISTICS and report["image"][0]["z"] > 2 * NO_CUE_Z
    assert report["probe"]["accuracy"] > report["probe"]["majority_accuracy"] + 0.2
    written = write_cue_report({**report, "dataset": "synthetic"}, tmp_path, formats=("json", "md", "html"), top=10)
    assert {p.name for p in written.values()} == {"cues.json", "cues.md", "cues.html", "cues.png"}
    assert "#irony" in (tmp_path / "cues.md").read_text() and "cues.png" in (tmp_path / "cues.md").read_text()
    assert json.loads((tmp_path / "cues.json").read_text())["tokens"][0]["token"] == "#irony"
    assert "#irony" in format_cue_table(report, 3).splitlines()[3]


def test_finder_reports_no_cue_above_the_threshold_without_a_planted_cue(synthetic):
    """train_cue_free draws both cues independently of the label: nothing should reach NO_CUE_Z."""
    report = find_cues(synthetic, split="train_cue_free", top=5, progress=False)
    assert report["tokens_above_threshold"] == 0 and report["tokens"][0]["z"] < NO_CUE_Z
    assert report["image"][0]["z"] < NO_CUE_Z
    assert report["probe"]["accuracy"] < report["probe"]["majority_accuracy"] + 0.1


def test_rare_tokens_do_not_outrank_a_frequent_consistent_one():
    texts = ["rare thing"] * 2 + ["common word"] * 150 + ["common word"] * 50 + ["plain text"] * 398
    labels = [1] * 2 + [1] * 150 + [0] * 50 + [0, 1] * 199
    ranked = [r["token"] for r in text_associations(texts, labels, 2)]
    assert ranked.index("common") < ranked.index("rare")
    rare = next(r for r in text_associations(texts, labels, 2) if r["token"] == "rare")
    assert rare["p_label_given_token"] == 1.0 and rare["z"] < NO_CUE_Z


def test_tokenize_joins_mmsd_hashtags_and_keeps_social_tokens():
    assert tokenize("So # Funny emoji_15 @Bob <url> don't !") == ["so", "#funny", "emoji_15", "@bob", "<url>", "don't", "!"]


def test_finder_takes_any_dataset_with_text_and_label_columns():
    rows = datasets.Dataset.from_dict({"text": ["a #x", "b", "a #x", "c"] * 20, "label": [1, 0, 1, 0] * 20})
    report = find_cues(rows, progress=False)
    hashtag = next(t for t in report["tokens"] if t["token"] == "#x")
    assert hashtag["label"] == "1" and hashtag["z"] >= NO_CUE_Z and hashtag["p_label_given_token"] == 1.0
    assert report["image"] is None and "no 'image'" in report["image_note"]
    with pytest.raises(ValueError, match="'label' column"):
        find_cues(datasets.Dataset.from_dict({"text": ["a"]}), progress=False)


@pytest.mark.skipif(default_data_dir() is None or not (default_data_dir() / "mmsd1").is_dir(),
                    reason="MMSD files (../shared/data/mmsd1, mmsd2) are not available")
def test_finder_finds_on_mmsd_the_hashtag_and_emoji_cues_that_mmsd2_removed():
    from mme_jd.data.real import load_mmsd, load_mmsd2

    mmsd = find_cues(load_mmsd(splits="train"), top=20, progress=False)
    mmsd2 = find_cues(load_mmsd2(splits="train"), top=10**6, progress=False)
    after = {t["token"]: t for t in mmsd2["tokens"]}
    removed = [t for t in mmsd["tokens"] if t["kind"] in ("hashtag", "emoji")]
    assert {t["kind"] for t in removed} == {"hashtag", "emoji"}
    assert all(t["z"] >= NO_CUE_Z for t in removed)
    for token in removed:  # gone from MMSD2.0, or at most a third of the rows left with a weaker z
        kept = after.get(token["token"])
        assert kept is None or (kept["count"] <= token["count"] / 3 and kept["z"] < token["z"]), token["token"]


# ---------------------------------------------------------------------------- declared cues


def test_cues_from_arguments_and_files(tmp_path):
    (tmp_path / "cues.json").write_text(json.dumps([{"name": "tags", "tokens": ["#not", "#sarcasm"]},
                                                    {"name": "frame", "image": "border", "params": {"width": 0.1}}]))
    cues = parse_cues(["irony=#irony", "red=image:dominant hue", str(tmp_path / "cues.json")])
    assert [(c.name, c.kind) for c in cues] == [("irony", "text"), ("red", "image"), ("tags", "text"),
                                               ("frame", "image")]
    tags = cues[2]
    assert tags.in_text("well #NOT again") and not tags.in_text("#nothing here") and tags.in_text("#sarcasm!")
    assert Cue.from_spec(tags.to_spec()).in_text("#not")
    assert load_cues(tmp_path / "cues.json")[1].params == {"width": 0.1}
    with pytest.raises(ValueError, match="not a valid regular expression"):
        parse_cues(["bad=(unclosed"])
    with pytest.raises(ValueError, match="NAME=REGEX"):
        parse_cues(["no-equals-sign"])
    with pytest.raises(ValueError, match="unknown image function"):
        Cue("x", image="watermark")
    with pytest.raises(ValueError, match="exactly one of"):
        Cue("x", pattern="a", tokens=["b"])


def test_declared_cues_give_the_synthetic_groups_and_are_cached_as_columns():
    rows = make_synthetic_split("validation_balanced", 160, seed=0)
    cues = [Cue("irony", pattern="#irony"), Cue("red", image="dominant hue")]
    out = add_cue_columns(rows, cues)
    assert {"cue_irony", "cue_red", "cue_group"} <= set(out.column_names)
    # (text, image) cues in the generator's order: the ids equal the synthetic `group` column
    assert out["cue_group"] == out["group"]
    assert out["cue_irony"] == [bool(v) for v in out["text_cue"]] and out["cue_red"] == [bool(v) for v in out["image_cue"]]
    names = cue_group_names(["irony", "red"], ["not_sarcastic", "sarcastic"])
    assert names[5] == "sarcastic|irony=0|red=1" and len(names) == 8

    def never(image):  # the flags are computed once: an existing column is not recomputed
        raise AssertionError("recomputed")

    again = add_cue_columns(out, [Cue("irony", pattern="#irony"), Cue("red", image=never)])
    assert again["cue_group"] == out["cue_group"]
    assert cue_group_ids([0, 1, 1], [np.array([1, 0, 1]), np.array([0, 0, 1]), np.array([1, 1, 1])]).tolist() == [5, 9, 15]


def test_built_in_image_cues_on_hand_made_images():
    plain = Image.new("RGB", (40, 40), (30, 60, 200))
    framed = plain.copy()
    framed.paste((0, 0, 0), (0, 0, 40, 3)), framed.paste((0, 0, 0), (0, 37, 40, 40))
    framed.paste((0, 0, 0), (0, 0, 3, 40)), framed.paste((0, 0, 0), (37, 0, 40, 40))
    marked = plain.copy()
    for x in range(0, 8, 2):
        marked.paste((255, 255, 255), (x, 0, x + 1, 8))
    flags = cue_flags({"image": [plain, framed, marked]},
                      [Cue("blue", image="dominant hue", params={"hue": 230}), Cue("frame", image="border"),
                       Cue("mark", image="corner watermark")])
    assert flags["blue"].tolist() == [True, True, True]
    assert flags["frame"].tolist() == [False, True, False]
    assert flags["mark"].tolist() == [False, False, True]


# ---------------------------------------------------------------------------- builders


def test_cue_only_and_cue_removed_text_builders_on_hand_made_rows():
    text = "what a great day #not emoji_12 , yeah right"
    only, masked = cue_only_text_counterfactual(text, ["#not"], "[MASK]")
    assert only == "what a [MASK] [MASK] #not [MASK] , [MASK] [MASK]" and masked == [2, 3, 5, 7, 8]
    removed, positions = cue_removed_text_counterfactual(text, ["#not", r"(?i)yeah right"])
    assert removed == "what a great day emoji_12 ," and positions == [4, 7, 8]
    assert cue_removed_text_counterfactual("no cue here", ["#not"]) == ("no cue here", [])
    built = text_counterfactuals([text], "cue_only", cue_patterns=[Cue("t", tokens=["#not"]).text_pattern])
    assert built[0][0] == only
    with pytest.raises(ValueError, match="declared text cue"):
        text_counterfactuals([text], "cue_removed")


def test_cue_only_image_masks_keep_the_declared_region():
    corner = cue_only_token_masks([{"name": "w", "kind": "image", "function": "corner watermark"}], [(4, 4)])[0]
    assert (~corner).reshape(4, 4).nonzero().tolist() == [[0, 0], [0, 3], [3, 0], [3, 3]]
    ring = cue_only_token_masks([{"name": "b", "kind": "image", "function": "border"}], [(4, 4)])[0].reshape(4, 4)
    assert ring.nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    hue = cue_only_token_masks([{"name": "h", "kind": "image", "function": "dominant hue"}], [(4, 4)])[0]
    assert bool(hue.all())  # its statistic, the mean colour, is what the mean fill keeps
    with pytest.raises(ValueError, match="keep_boxes"):
        cue_only_token_masks([{"name": "c", "kind": "image", "function": "logo"}], [(4, 4)])


def test_collator_builds_cue_only_and_cue_removed_from_the_config_cues():
    from mme_jd.tiny import tiny_model

    model = tiny_model()
    cues = [Cue("irony", pattern="#irony"), Cue("logo", image="corner watermark")]
    model.config.cues = [c.to_spec() for c in cues]
    model.config.validate_fields()
    rows = [{"text": "the movie was great #irony", "image": Image.new("RGB", (32, 32), (200, 30, 30)), "label": 1},
            {"text": "my day is bad", "image": Image.new("RGB", (32, 32), (30, 30, 200)), "label": 0}]
    batch = CounterfactualTripleCollator(model.processor, model.config, text_counterfactual="cue_only",
                                         image_counterfactual="cue_only")(rows)
    assert batch["metadata"]["text_mask_positions"] == [[1, 3], [1, 3]]
    image_cf, original = batch["image_counterfactual"]["pixel_values"], batch["pixel_values"]
    assert torch.equal(image_cf[:, :, :8, :8], original[:, :, :8, :8])  # a corner patch is kept
    assert not torch.equal(image_cf[:, :, 8:24, 8:24], original[:, :, 8:24, 8:24])
    removed = CounterfactualTripleCollator(model.processor, model.config, text_counterfactual="cue_removed",
                                           parts=("text",))(rows)
    assert removed["text_counterfactual_valid"].tolist() == [True, False]  # unchanged text: no target
    # the cue-removed text keeps the image: only the cue is gone
    assert torch.equal(removed["text_counterfactual"]["pixel_values"], removed["pixel_values"])


def test_config_checks_declared_cue_specs():
    config = MMEJDConfig(text_counterfactual="cue_only", image_counterfactual="cue_only",
                         cues=[Cue("irony", pattern="#irony").to_spec()])
    assert MMEJDConfig.from_dict(config.to_dict()).cues == config.cues
    with pytest.raises(ValueError, match="not a valid regular expression"):
        MMEJDConfig(cues=[{"name": "x", "kind": "text", "pattern": "("}])
    with pytest.raises(ValueError, match="repeats a name"):
        MMEJDConfig(cues=[Cue("a", pattern="x").to_spec(), Cue("a", pattern="y").to_spec()])
