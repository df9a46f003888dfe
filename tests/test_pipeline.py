"""The `multimodal-debias` pipeline: installed (registered by `import mme_jd`) and as remote code
in a fresh offline process without the package; batching equals single calls; modes,
strategies, top_k, experts, explanations; the saved folder records and carries the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TEXTS, nudge_experts, random_images
from transformers import pipeline

import mme_jd  # noqa: F401  (registers the task)
from mme_jd.modeling.configuration_mme_jd import ROUTER_STRATEGIES
from mme_jd.modeling.counterfactual_mme_jd import (apply_image_counterfactual, build_triple, call_processor,
                                                   text_counterfactuals, top_token_masks)
from mme_jd.modeling.pipeline_mme_jd import PIPELINE_TASK, REMOTE_PIPELINE_TASK, MultimodalDebiasPipeline

MORE_TEXTS = TEXTS + ["the day was terrible #irony", "good movie", "my movie is fun today"]


@pytest.fixture
def model(tiny_llava_model):
    """The tiny LLaVA with distinct experts and a router that sends some samples away."""
    nudge_experts(tiny_llava_model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in tiny_llava_model.router.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
        tiny_llava_model.router.out.bias.copy_(torch.tensor([0.0, 1.0, 1.0, 1.0]))
    return tiny_llava_model


@pytest.fixture
def inputs():
    return [{"image": image, "text": text} for image, text in zip(random_images(len(MORE_TEXTS), seed=3), MORE_TEXTS)]


@pytest.fixture
def folder(model, tmp_path):
    path = tmp_path / "model"
    model.save_pretrained(path)
    return path


def _probabilities(results):
    return torch.tensor([[r["scores"][name] for name in ("not_sarcastic", "sarcastic")] for r in results])


def test_installed_pipeline_matches_the_model(model, folder, inputs):
    pipe = pipeline(PIPELINE_TASK, model=str(folder))
    assert isinstance(pipe, MultimodalDebiasPipeline)
    assert type(pipe.model).__module__ == "mme_jd.modeling.modeling_mme_jd"
    results = pipe(inputs, batch_size=4)
    original = call_processor(model.processor, model.config, [i["text"] for i in inputs], [i["image"] for i in inputs])
    with torch.no_grad():
        out = model(**original, mode="mme_jd")
    assert torch.allclose(_probabilities(results), out.logits.softmax(-1), atol=1e-5)
    strategies = [ROUTER_STRATEGIES[s] for s in out.strategy.tolist()]
    assert [r["strategy"] for r in results] == strategies
    assert len(set(strategies)) > 1, "the fixture's router should route samples differently"
    for result in results:
        assert set(result) == {"label", "score", "strategy", "scores"}
        assert result["label"] == max(result["scores"], key=result["scores"].get)
        assert result["score"] == result["scores"][result["label"]]
        assert abs(sum(result["scores"].values()) - 1) < 1e-5


def test_input_forms_agree(model, inputs):
    pipe = pipeline(PIPELINE_TASK, model=model)
    listed = pipe(inputs[:3])
    assert pipe(inputs[0]) == listed[0]
    assert pipe(images=inputs[0]["image"], text=inputs[0]["text"]) == listed[0]
    assert pipe(images=[i["image"] for i in inputs[:3]], text=[i["text"] for i in inputs[:3]]) == listed
    assert pipe(tuple(inputs[:3])) == listed
    assert pipe([]) == []


@pytest.mark.parametrize("options", [{"mode": "mme_jd"}, {"mode": "general"}, {"mode": "mid"},
                                     {"mode": "mme_jd", "explain": True, "return_experts": True}])
def test_batching_gives_the_same_results_as_single_calls(model, inputs, options):
    pipe = pipeline(PIPELINE_TASK, model=model)
    batched = pipe(inputs, batch_size=4, **options)
    single = [pipe(item, **options) for item in inputs]
    assert [r["label"] for r in batched] == [r["label"] for r in single]
    assert [r["strategy"] for r in batched] == [r["strategy"] for r in single]
    assert torch.allclose(_probabilities(batched), _probabilities(single), atol=1e-5)
    if options.get("explain"):
        for b, s in zip(batched, single):
            assert b["counterfactuals"]["image"]["masked_patches"] == s["counterfactuals"]["image"]["masked_patches"]
            assert b["counterfactuals"]["text"]["text"] == s["counterfactuals"]["text"]["text"]
            for part in ("text", "image"):
                for name, value in b["counterfactuals"][part]["scores"].items():
                    assert abs(value - s["counterfactuals"][part]["scores"][name]) < 1e-5
            for expert, scores in b["experts"].items():
                for name, value in scores.items():
                    assert abs(value - s["experts"][expert][name]) < 1e-5


def test_mid_uses_the_training_counterfactuals(model, inputs):
    """Mode mid equals the model fed by build_triple + image_saliency masks (the training code)."""
    pipe = pipeline(PIPELINE_TASK, model=model)
    results = pipe(inputs, mode="mid", batch_size=len(inputs))
    texts, images = [i["text"] for i in inputs], [i["image"] for i in inputs]
    cf_texts = [text for text, _ in text_counterfactuals(texts, "lexical", model.config.mask_word)]
    triple = build_triple(model.processor, model.config, texts, images, cf_texts)
    with torch.no_grad():
        saliency, _ = model.image_saliency(triple["original"], "attention")
        image_cf = apply_image_counterfactual(model.config, triple["image_counterfactual"],
                                              top_token_masks(saliency, model.config.image_mask_ratio))
        out = model(**triple["original"], text_counterfactual=triple["text_counterfactual"],
                    image_counterfactual=image_cf, mode="mid")
    assert torch.allclose(_probabilities(results), out.logits.softmax(-1), atol=1e-5)
    assert {r["strategy"] for r in results} == {"mid"}


def test_modes_top_k_experts_and_explanations(model, inputs):
    pipe = pipeline(PIPELINE_TASK, model=model, mode="general")
    assert {r["strategy"] for r in pipe(inputs[:2])} == {"general"}  # constructor default
    assert {r["strategy"] for r in pipe(inputs[:2], mode="mctd")} == {"mctd"}  # call override
    top = pipe(inputs[0], top_k=1)
    assert list(top["scores"]) == [top["label"]]
    result = pipe(inputs[0], mode="mme_jd", return_experts=True, explain=True)
    assert set(result["experts"]) == {"general", "image_debias", "text_debias"}
    assert set(result["router_scores"]) == {"none", "image", "text", "both"}
    text_cf, image_cf = result["counterfactuals"]["text"], result["counterfactuals"]["image"]
    assert text_cf["builder"] == "lexical"
    assert text_cf["masked_words"] == ["movie", "great"] and text_cf["masked_word_positions"] == [1, 3]
    assert text_cf["text"] == "the [MASK] was [MASK] #irony"
    assert image_cf["grid"] == [4, 4] and len(image_cf["masked_patches"]) == 4  # 25% of 16 patches
    assert all(0 <= p < 16 for p in image_cf["masked_patches"])
    for part in (text_cf, image_cf):
        assert abs(sum(part["scores"].values()) - 1) < 1e-5
    # the general expert's own scores agree with mode general
    general = pipe(inputs[0], mode="general")
    assert all(abs(general["scores"][k] - v) < 1e-5 for k, v in result["experts"]["general"].items())


def test_text_only_inputs_of_a_text_only_model(model, inputs):
    """A model with image_less_rows="text_only" (from_base's default here) takes image None: the
    input gets no image tokens, exactly as the collator and `call_processor` give it in training,
    its scores do not depend on the batch it is in, and its explanation has no patch to mask."""
    assert model.config.image_less_rows == "text_only"
    mixed = [{**item, "image": None} if i % 2 == 0 else item for i, item in enumerate(inputs[:6])]
    pipe = pipeline(PIPELINE_TASK, model=model)
    results = pipe(mixed, batch_size=4)
    original = call_processor(model.processor, model.config, [i["text"] for i in mixed], [i["image"] for i in mixed])
    assert (original["input_ids"][::2] == model.config.image_token_id).sum() == 0
    with torch.no_grad():
        out = model(**original, mode="mme_jd")
    assert torch.allclose(_probabilities(results), out.logits.softmax(-1), atol=1e-5)
    alone = [pipe(item) for item in mixed]  # alone or batched with image rows: the same
    assert [(r["label"], r["strategy"]) for r in alone] == [(r["label"], r["strategy"]) for r in results]
    assert torch.allclose(_probabilities(alone), _probabilities(results), atol=1e-5)
    explained = pipe(mixed[:2], explain=True)
    assert explained[0]["counterfactuals"]["image"]["grid"] == [0, 0]
    assert explained[0]["counterfactuals"]["image"]["masked_patches"] == []
    assert explained[1]["counterfactuals"]["image"]["grid"] == [4, 4]
    assert explained[0]["label"] == results[0]["label"]


def test_saliency_builder_and_training_only_fallbacks(model, inputs):
    model.config.text_counterfactual = "saliency"
    pipe = pipeline(PIPELINE_TASK, model=model)
    result = pipe(inputs[0], explain=True)["counterfactuals"]["text"]
    assert result["builder"] == "saliency"
    assert len(result["masked_word_positions"]) == round(0.3 * 5)  # text_mask_ratio of 5 words
    for builder in ("swap", "given"):
        model.config.text_counterfactual = builder
        assert pipe(inputs[0], explain=True)["counterfactuals"]["text"]["builder"] == "lexical"
    model.config.image_counterfactual = "given"
    assert pipe(inputs[0], explain=True)["counterfactuals"]["image"]["builder"] == "attention"


def test_saved_folder_records_and_carries_the_pipeline(model, tmp_path, inputs):
    pipe = pipeline(PIPELINE_TASK, model=model)
    folder = tmp_path / "from_pipeline"
    pipe.save_pretrained(folder)
    files = set(os.listdir(folder))
    assert {"pipeline_mme_jd.py", "inputs_mme_jd.py", "modeling_mme_jd.py", "processor_config.json",
            "tokenizer.json", "model.safetensors"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"] == {
        REMOTE_PIPELINE_TASK: {"impl": "pipeline_mme_jd.MultimodalDebiasPipeline", "pt": ["AutoModel"],
                               "type": "multimodal"}
    }
    reloaded = pipeline(PIPELINE_TASK, model=str(folder))
    assert reloaded(inputs[:2]) == pipe(inputs[:2])


REMOTE_SCRIPT = r"""
import sys, json
sys.modules["mme_jd"] = None  # the package cannot be imported at all
import torch
torch.set_num_threads(1)
from transformers import pipeline
from PIL import Image
folder, images_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
texts = json.loads(sys.argv[4])
pipe = pipeline(model=folder, trust_remote_code=True)
inputs = [{"image": Image.open(f"{images_dir}/{i}.png"), "text": t} for i, t in enumerate(texts)]
results = pipe(inputs, batch_size=3)
explained = pipe(inputs[0], explain=True, mode="mid")
json.dump({"results": results, "explained": explained, "class": type(pipe).__module__, "task": pipe.task,
           "model": type(pipe.model).__module__}, open(out, "w"))
"""


def test_remote_code_pipeline_in_a_fresh_offline_process(model, folder, inputs, tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for index, item in enumerate(inputs):
        item["image"].save(images_dir / f"{index}.png")
    texts = [item["text"] for item in inputs]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = tmp_path / "remote.json"
    process = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(images_dir), str(out),
                              json.dumps(texts)], env=env, capture_output=True, text=True, timeout=300,
                             cwd=str(tmp_path))
    assert process.returncode == 0, process.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["class"].startswith("transformers_modules") and got["model"].startswith("transformers_modules")
    assert got["task"] == REMOTE_PIPELINE_TASK
    local = pipeline(PIPELINE_TASK, model=str(folder))
    expected = local(inputs, batch_size=3)
    assert [r["label"] for r in got["results"]] == [r["label"] for r in expected]
    assert [r["strategy"] for r in got["results"]] == [r["strategy"] for r in expected]
    assert torch.allclose(_probabilities(got["results"]), _probabilities(expected), atol=1e-5)
    explained = local(inputs[0], explain=True, mode="mid")
    compared = {"text": ("text", "masked_words", "masked_word_positions"), "image": ("masked_patches", "grid")}
    for part, keys in compared.items():
        remote, here = got["explained"]["counterfactuals"][part], explained["counterfactuals"][part]
        assert [remote[k] for k in keys] == [here[k] for k in keys]
        assert all(abs(remote["scores"][k] - v) < 1e-5 for k, v in here["scores"].items())


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_other_families_batch_like_single_calls(family):
    """merged_rows (Qwen2-VL) and Idefics3 layouts: explanations and mid, batched and single."""
    from families import FAMILIES

    from mme_jd.base import from_base

    base, processor = FAMILIES[family]()
    model = from_base(base, processor).eval()
    nudge_experts(model)
    pipe = pipeline(PIPELINE_TASK, model=model)
    items = [{"image": image, "text": text} for image, text in zip(random_images(3, seed=4), TEXTS)]
    batched = pipe(items, batch_size=3, mode="mid", explain=True)
    single = [pipe(item, mode="mid", explain=True) for item in items]
    assert torch.allclose(_probabilities(batched), _probabilities(single), atol=1e-5)
    for b, s in zip(batched, single):
        for key in ("masked_patches", "grid"):
            assert b["counterfactuals"]["image"][key] == s["counterfactuals"]["image"][key]
    with pytest.raises(ValueError, match="input 0: text contains the model's image placeholder"):
        pipe({"image": items[0]["image"], "text": "look " + processor.image_token})
