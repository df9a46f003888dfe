"""The counterfactual-triple collator on synthetic rows with the random tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from mme_jd.data.collator import METADATA_COLUMNS, CounterfactualTripleCollator
from mme_jd.modeling.configuration_mme_jd import MMEJDLossSettings
from mme_jd.modeling.counterfactual_mme_jd import boxes_to_token_masks

IMAGE_TOKENS = 16  # 32 px images in 8 px patches


@pytest.fixture(scope="module")
def model():
    from mme_jd.tiny import tiny_model

    return tiny_model().eval()


@pytest.fixture(scope="module")
def dataset():
    from mme_jd.data.synthetic import make_synthetic_benchmark

    return make_synthetic_benchmark(num_train=16, num_classes=2, seed=0, splits=["train"])["train"]


@pytest.fixture(scope="module")
def rows(dataset):
    return [dataset[i] for i in range(6)]


def _words(processor, ids, mask=None):
    """The tokens of one row without image and padding tokens."""
    tokens = processor.tokenizer.convert_ids_to_tokens(ids[mask.bool()] if mask is not None else ids)
    return [t for t in tokens if t not in ("<image>", "[PAD]")]


def _prompt_words(text: str) -> list[str]:
    return [*text.split(), "question", ":", "is", "it", "sarcastic", "?", "answer", ":"]


def test_triple_shapes_labels_and_targets(model, rows):
    collator = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="given")
    batch = collator(rows)
    size = len(rows)
    parts = {"original": batch, "text": batch["text_counterfactual"], "image": batch["image_counterfactual"]}
    length = batch["input_ids"].shape[1]
    for name, part in parts.items():
        assert part["input_ids"].shape == part["attention_mask"].shape == (size, length), name
        assert part["pixel_values"].shape == (size, 3, 32, 32), name
        image_tokens = (part["input_ids"] == model.config.image_token_id).sum(dim=1)
        assert image_tokens.tolist() == [IMAGE_TOKENS] * size, name
    labels = torch.tensor([row["label"] for row in rows])
    assert torch.equal(batch["labels"], labels)
    assert torch.equal(batch["counterfactual_targets"], torch.nn.functional.one_hot(1 - labels, 2).float())
    assert batch["text_counterfactual_valid"].dtype == torch.bool and batch["text_counterfactual_valid"].all()
    # the model takes the batch as it is (metadata is ignored) and gives the MCTD loss
    with torch.no_grad():
        out = model(**batch, mode="general")
    assert out.logits.shape == (size, 2) and math.isfinite(float(out.loss))
    assert out.text_counterfactual_logits.shape == out.image_counterfactual_logits.shape == (size, 2)


def test_counterfactual_contents(model, rows):
    processor = model.processor
    collator = CounterfactualTripleCollator(processor, model.config, image_counterfactual="given")
    batch = collator(rows)
    text_cf, image_cf = batch["text_counterfactual"], batch["image_counterfactual"]
    for i, row in enumerate(rows):
        assert _words(processor, batch["input_ids"][i], batch["attention_mask"][i]) == _prompt_words(row["text"])
        # text counterfactual: the content words masked, the cue token and function words kept
        masked = _words(processor, text_cf["input_ids"][i], text_cf["attention_mask"][i])[: len(row["text"].split())]
        positions = batch["metadata"]["text_mask_positions"][i]
        assert set(row["core_word_positions"]) <= set(positions)
        for j, word in enumerate(row["text"].split()):
            assert masked[j] == ("[MASK]" if j in positions else word)
        # ... and a null image: every pixel is the image's channel mean
        original = batch["pixel_values"][i]
        mean = original.mean(dim=(-2, -1), keepdim=True)
        assert torch.allclose(text_cf["pixel_values"][i], mean.expand_as(original), atol=1e-6)
        # image counterfactual: empty text, the glyph's patches filled with the mean, the rest kept
        assert _words(processor, image_cf["input_ids"][i], image_cf["attention_mask"][i]) == _prompt_words("")
        mask = torch.tensor(batch["metadata"]["image_mask"][i]).reshape(4, 4)
        pixel_mask = mask.repeat_interleave(8, 0).repeat_interleave(8, 1)
        filled = image_cf["pixel_values"][i]
        assert torch.allclose(filled[:, pixel_mask], mean.expand_as(original)[:, pixel_mask], atol=1e-6)
        assert torch.equal(filled[:, ~pixel_mask], original[:, ~pixel_mask])


def test_metadata_and_given_builders_reproduce_the_truth(model, rows):
    collator = CounterfactualTripleCollator(model.processor, model.config, text_counterfactual="given",
                                            image_counterfactual="given")
    batch = collator(rows)
    metadata = batch["metadata"]
    for key in METADATA_COLUMNS:
        assert metadata[key] == [row[key] for row in rows], key
    assert metadata["text_mask_positions"] == [sorted(row["core_word_positions"]) for row in rows]
    truth = boxes_to_token_masks([row["core_box"] for row in rows], [(4, 4)] * len(rows))
    assert metadata["image_mask"] == [m.tolist() for m in truth]
    # `given` masks exactly the sentiment word
    for i, row in enumerate(rows):
        words = row["text"].split()
        (core,) = row["core_word_positions"]
        expected = " ".join("[MASK]" if j == core else w for j, w in enumerate(words))
        cf = batch["text_counterfactual"]
        got = _words(model.processor, cf["input_ids"][i], cf["attention_mask"][i])[: len(words)]
        assert " ".join(got) == expected


def test_swap_counterfactual_replaces_only_the_sentiment_word(model, rows):
    from mme_jd.data.synthetic import NEGATIVE_WORDS, POSITIVE_WORDS

    collator = CounterfactualTripleCollator(model.processor, model.config, text_counterfactual="swap",
                                            image_counterfactual="given",
                                            vocabulary=set(model.processor.tokenizer.get_vocab()))
    batch = collator(rows)
    assert batch["metadata"]["text_mask_positions"] == [row["core_word_positions"] for row in rows]
    cf = batch["text_counterfactual"]
    for i, row in enumerate(rows):
        (core,) = row["core_word_positions"]
        word = _words(model.processor, cf["input_ids"][i], cf["attention_mask"][i])[core]
        assert word in (NEGATIVE_WORDS if row["text_sentiment"] == 1 else POSITIVE_WORDS)


def test_three_classes_reverse_targets_and_skip_unchanged_texts():
    from mme_jd.data.synthetic import make_synthetic_benchmark
    from mme_jd.tiny import tiny_model

    data = make_synthetic_benchmark(num_train=12, num_classes=3, seed=1, splits=["train"])["train"]
    rows = [data[i] for i in range(len(data))]
    model = tiny_model(label_words=["negative", "neutral", "positive"], labels=["negative", "neutral", "positive"],
                       question="what is the sentiment ?").eval()
    collator = CounterfactualTripleCollator(model.processor, model.config, text_counterfactual="swap",
                                            image_counterfactual="given")
    batch = collator(rows)
    labels = torch.tensor([row["label"] for row in rows])
    assert torch.equal(batch["labels"], labels)
    expected = torch.full((len(rows), 3), 0.5).scatter(1, labels[:, None], 0.0)
    assert torch.equal(batch["counterfactual_targets"], expected)
    # a neutral word has no opposite: swap changes nothing there, so no reversed target
    assert batch["text_counterfactual_valid"].tolist() == [row["text_sentiment"] != 1 for row in rows]
    assert {1, 0, 2} >= set(row["text_sentiment"] for row in rows)
    with torch.no_grad():
        out = model(**batch, mode="general")
    assert out.logits.shape == (len(rows), 3) and math.isfinite(float(out.loss))
    uniform = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="given",
                                           loss_settings=MMEJDLossSettings(cf_target="uniform"))(rows)
    assert torch.allclose(uniform["counterfactual_targets"], torch.full((len(rows), 3), 1 / 3))


def test_precomputed_columns_are_used(model, rows):
    precomputed = []
    for i, row in enumerate(rows):
        words = row["text"].split()
        mask = [False] * IMAGE_TOKENS
        mask[i] = True
        precomputed.append({**row, "text_counterfactual": " ".join(["[MASK]"] + words[1:]),
                            "text_mask_positions": [0], "image_counterfactual_mask": mask})
    collator = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="attention")
    batch = collator(precomputed)  # no saliency model needed: the masks are given
    assert batch["metadata"]["text_mask_positions"] == [[0]] * len(rows)
    assert batch["metadata"]["image_mask"] == [row["image_counterfactual_mask"] for row in precomputed]
    cf = batch["text_counterfactual"]
    for i, row in enumerate(precomputed):
        got = _words(model.processor, cf["input_ids"][i], cf["attention_mask"][i])[: len(row["text"].split())]
        assert " ".join(got) == row["text_counterfactual"]
    assert batch["text_counterfactual_valid"].all()
    # a precomputed counterfactual without its positions: the changed words are found by comparison
    without_positions = [{k: v for k, v in row.items() if k != "text_mask_positions"} for row in precomputed]
    batch = collator(without_positions)
    assert batch["metadata"]["text_mask_positions"] == [[0]] * len(rows)
    assert batch["text_counterfactual_valid"].all()
    unchanged = [{**row, "text_counterfactual": row["text"]} for row in without_positions]
    assert not collator(unchanged)["text_counterfactual_valid"].any()


def test_saliency_image_masks_need_a_model(model, rows):
    collator = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="attention")
    with pytest.raises(ValueError, match="saliency_model"):
        collator(rows)
    collator = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="gradient",
                                            saliency_model=model)
    masks = collator(rows)["metadata"]["image_mask"]
    expected = round(model.config.image_mask_ratio * IMAGE_TOKENS)
    assert [sum(m) for m in masks] == [expected] * len(rows)
    text_saliency = CounterfactualTripleCollator(model.processor, model.config, text_counterfactual="saliency",
                                                 image_counterfactual="given")
    with pytest.raises(ValueError, match="text_word_scores|per-word scores"):
        text_saliency(rows)
    scored = [{**row, "text_word_scores": [float(j == row["core_word_positions"][0])
                                           for j in range(len(row["text"].split()))]} for row in rows]
    positions = text_saliency(scored)["metadata"]["text_mask_positions"]
    assert all(row["core_word_positions"][0] in p for row, p in zip(rows, positions))


def test_rows_without_an_image_mask_nothing_and_need_no_saliency_pass(model, rows):
    """The flat grey stand-in of a row without an image stays as it is when its patches are
    filled with its mean: such rows mask nothing, and a batch of them runs no saliency pass
    (no saliency model is needed); in a mixed batch only the rows with an image are masked."""
    stand_ins = [{**row, "image": None, "image_description": "dog park"} for row in rows]
    collator = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="attention")
    batch = collator(stand_ins)
    assert [sum(m) for m in batch["metadata"]["image_mask"]] == [0] * len(rows)
    assert torch.equal(batch["image_counterfactual"]["pixel_values"], batch["pixel_values"])
    mixed = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="attention",
                                         saliency_model=model)(stand_ins[:3] + rows[3:])
    expected = round(model.config.image_mask_ratio * IMAGE_TOKENS)
    assert [sum(m) for m in mixed["metadata"]["image_mask"]] == [0, 0, 0] + [expected] * (len(rows) - 3)


def test_originals_only(model, rows):
    full = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="given")(rows)
    batch = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)(rows)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "labels", "metadata"}
    assert torch.equal(batch["pixel_values"], full["pixel_values"])
    for i in range(len(rows)):
        assert torch.equal(batch["input_ids"][i][batch["attention_mask"][i].bool()],
                           full["input_ids"][i][full["attention_mask"][i].bool()])
    assert set(batch["metadata"]) == set(METADATA_COLUMNS)
    unlabelled = [{k: v for k, v in row.items() if k != "label"} for row in rows]
    assert "labels" not in CounterfactualTripleCollator(model.processor, model.config,
                                                        image_counterfactual="given")(unlabelled)
    with pytest.raises(ValueError, match="empty"):
        CounterfactualTripleCollator(model.processor, model.config)([])


def test_rows_without_images_use_the_description(model):
    row = {"text": "the movie was great", "image": None, "image_description": "a happy dog", "label": 1}
    collator = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual="given",
                                            include_counterfactuals=False)
    batch = collator([row])
    words = _words(model.processor, batch["input_ids"][0], batch["attention_mask"][0])
    assert words[:8] == ["the", "movie", "was", "great", "image", ":", "a", "happy"]


def test_works_with_the_trainer(tmp_path, dataset):
    from transformers import Trainer, TrainingArguments

    from mme_jd.tiny import tiny_model

    model = tiny_model()
    model.config.mode = "general"
    trained = model.set_trainable("general")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    collator = CounterfactualTripleCollator(model.processor, model.config, text_counterfactual="swap",
                                            image_counterfactual="given")
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        remove_unused_columns=False, label_names=["labels"], report_to=[], save_strategy="no",
        logging_steps=1, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    result = trainer.train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    trained_names = {name for name, p in model.named_parameters() if any(p is q for q in trained)}
    assert changed and changed <= trained_names  # only the general expert moved
    assert all(".general." in name for name in changed)


@pytest.mark.parametrize("other_modality", ["null", "keep"])
def test_stand_in_description_words_follow_the_image_in_counterfactuals(model, other_modality):
    """A row whose image side is words: the text counterfactual drops them with "null" (the image
    is nulled) and the image counterfactual carries them, edited by the text builder."""
    import copy

    from conftest import random_images

    config = copy.deepcopy(model.config)
    config.other_modality = other_modality
    config.swap_other_modality = other_modality
    rows = [{"text": "the movie was great", "image": None, "image_description": "a happy dog", "label": 1},
            {"text": "the movie was great", "image": random_images(1, size=32)[0], "label": 0}]
    collator = CounterfactualTripleCollator(model.processor, config, text_counterfactual="swap",
                                            image_counterfactual="given")
    rows[1]["core_box"] = [0, 0, 0.5, 0.5]
    rows[0]["core_box"] = [0, 0, 0.5, 0.5]
    batch = collator(rows)
    text_cf = _words(model.processor, batch["text_counterfactual"]["input_ids"][0],
                     batch["text_counterfactual"]["attention_mask"][0])
    image_cf = _words(model.processor, batch["image_counterfactual"]["input_ids"][0],
                      batch["image_counterfactual"]["attention_mask"][0])
    plain_image_cf = _words(model.processor, batch["image_counterfactual"]["input_ids"][1],
                            batch["image_counterfactual"]["attention_mask"][1])
    assert text_cf[:3] == ["the", "movie", "was"] and text_cf[3] != "great"  # swapped
    swapped = image_cf[image_cf.index("image") + 2:][:3]
    assert swapped[:2] == ["a", "sad"]  # the lexicon's antonym of "happy"
    if other_modality == "null":
        assert "image" not in text_cf and "happy" not in text_cf
        assert image_cf[:2] == ["image", ":"]
        assert "movie" not in plain_image_cf  # a row with a real image: empty text as before
    else:
        assert text_cf[4:8] == ["image", ":", "a", "happy"]
        assert image_cf[:6] == ["the", "movie", "was", "great", "image", ":"]
        assert plain_image_cf[:4] == ["the", "movie", "was", "great"]


def test_a_swap_counterfactual_keeps_the_image_for_its_reversed_label(model):
    """swap flips the label of a complete input: by default (swap_other_modality="keep") its
    text counterfactual keeps the image (pixels and stand-in words) while other_modality="null"
    still nulls the image of a cue-only (lexical) counterfactual; the text expert's
    product-of-experts objective uses the cue-only form."""
    import copy

    from conftest import random_images

    config = copy.deepcopy(model.config)
    assert config.other_modality == "null" and config.swap_other_modality == "keep"
    image = random_images(1, size=32)[0]
    rows = [{"text": "the movie was great", "image": image, "label": 1},
            {"text": "the movie was great", "image": None, "image_description": "a happy dog", "label": 0}]

    def text_cf(builder, **loss_settings):
        collator = CounterfactualTripleCollator(model.processor, config, text_counterfactual=builder, parts=("text",),
                                                expert="text_debias", loss_settings=MMEJDLossSettings(**loss_settings))
        batch = collator(rows)
        return batch["pixel_values"], batch["text_counterfactual"]

    original, swapped = text_cf("swap")
    assert torch.equal(swapped["pixel_values"][0], original[0])  # the image is kept
    words = _words(model.processor, swapped["input_ids"][1], swapped["attention_mask"][1])
    assert words[4:8] == ["image", ":", "a", "happy"]  # and so are the stand-in words
    _, masked = text_cf("lexical")
    assert not torch.equal(masked["pixel_values"][0], original[0])  # cue-only: mean image
    _, poe = text_cf("swap", text_debias_objective="poe")
    assert not torch.equal(poe["pixel_values"][0], original[0])
    assert "image" not in _words(model.processor, poe["input_ids"][1], poe["attention_mask"][1])


def _with_image_less_rows(model, mode: str):
    import copy

    config = copy.deepcopy(model.config)
    config.image_less_rows = mode
    return config


def test_rows_without_an_image_get_no_image_tokens_and_no_vision_pass(model, rows):
    """`image_less_rows="text_only"` (what from_base gives): a row without an image keeps its
    words and loses only its image tokens; its logits are the same alone as in a batch with
    image rows; the vision tower encodes only the rows that have an image (none in a batch
    without one); "stand_in" keeps the grey image's tokens, and its logits differ."""
    assert model.config.image_less_rows == "text_only"
    image_less = [{**row, "image": None, "image_description": "dog park"} for row in rows[:3]]
    mixed_rows = image_less + rows[3:]
    collate = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)
    stand_in = CounterfactualTripleCollator(model.processor, _with_image_less_rows(model, "stand_in"),
                                            include_counterfactuals=False)
    mixed, grey = collate(mixed_rows), stand_in(mixed_rows)
    image_tokens = (mixed["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    assert image_tokens == [0, 0, 0] + [IMAGE_TOKENS] * (len(rows) - 3)
    assert mixed["pixel_values"].shape[0] == len(rows)  # one entry per sample: batches split by sample
    for i in range(len(rows)):  # the same words in both, the image tokens aside
        assert _words(model.processor, mixed["input_ids"][i], mixed["attention_mask"][i]) == \
            _words(model.processor, grey["input_ids"][i], grey["attention_mask"][i])

    encoded: list[int] = []
    tower = model.base_model_with_experts.model.vision_tower
    handle = tower.register_forward_hook(lambda module, args, output: encoded.append(args[0].shape[0]))

    def logits(batch):
        inputs = {k: v for k, v in batch.items() if k not in ("metadata", "labels")}
        with torch.no_grad():
            return model(**inputs, mode="general").logits

    try:
        together = logits(mixed)
        assert encoded == [len(rows) - 3]
        alone = torch.cat([logits(collate([row])) for row in mixed_rows])
        assert encoded[1:] == [1] * (len(rows) - 3)  # an image-less row alone: no vision pass
        grey_logits = logits(grey)
    finally:
        handle.remove()
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together[3:], grey_logits[3:], atol=1e-5)  # rows with an image: unchanged
    assert not torch.allclose(together[:3], grey_logits[:3], atol=1e-3)  # image-less rows: no grey tokens


@pytest.mark.parametrize("builder", ["attention", "gradient", "given"])
def test_text_only_rows_in_counterfactual_triples(model, rows, builder):
    """Triples of a mixed batch: the text-only rows have no image tokens to mask in either
    counterfactual (saliency, boxes), the rows with an image are masked as before, and the
    batch trains: the loss is finite and has gradients."""
    image_less = [{**row, "image": None, "image_description": "dog park"} for row in rows[:2]]
    batch = CounterfactualTripleCollator(model.processor, model.config, image_counterfactual=builder,
                                         saliency_model=model)(image_less + rows[2:])
    expected = round(model.config.image_mask_ratio * IMAGE_TOKENS)
    masked = [sum(m) for m in batch["metadata"]["image_mask"]]
    assert masked[:2] == [0, 0] and all(m > 0 for m in masked[2:])
    if builder != "given":
        assert masked[2:] == [expected] * (len(rows) - 2)
    assert batch["metadata"]["image_grid"][:2] == [[0, 0], [0, 0]]
    for part in (batch, batch["text_counterfactual"], batch["image_counterfactual"]):
        assert (part["input_ids"][:2] == model.config.image_token_id).sum() == 0
    from mme_jd.tiny import tiny_model

    trainee = tiny_model()
    trained = trainee.set_trainable("general")
    inputs = {k: v for k, v in batch.items() if k != "metadata"}
    loss = trainee(**inputs, expert="general").loss  # the MCTD loss over the triple
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in trained)


def test_without_image_tokens_repads_on_the_side_it_was_padded():
    """Left- and right-padded batches keep their padding side; other per-token tensors follow."""
    from mme_jd.modeling.counterfactual_mme_jd import without_image_tokens

    image, pad = 9, 0
    right = {"input_ids": torch.tensor([[1, 9, 9, 2, 3], [1, 9, 9, 4, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
             "pixel_values": torch.zeros(2, 3, 4, 4)}
    out = without_image_tokens(right, torch.tensor([False, True]), image, pad)
    assert out["input_ids"].tolist() == [[1, 9, 9, 2, 3], [1, 4, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert out["pixel_values"] is right["pixel_values"]
    left = {"input_ids": torch.tensor([[0, 1, 9, 9, 2], [1, 9, 9, 4, 5]]),
            "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])}
    out = without_image_tokens(left, torch.tensor([True, True]), image, pad)
    assert out["input_ids"].tolist() == [[0, 1, 2], [1, 4, 5]]
    assert out["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
