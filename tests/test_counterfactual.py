"""Counterfactual builders: text masking keeps the context, image masking fills exactly the
masked patches with the image mean, token masks from boxes."""

import pytest
import torch
from conftest import TEXTS, random_images

from mme_jd.modeling.counterfactual_mme_jd import (boxes_to_token_masks, build_triple, given_text_counterfactual,
                                                   is_context_word, lexical_text_counterfactual, mask_image_tokens,
                                                   reversed_targets, saliency_text_counterfactual,
                                                   swap_text_counterfactual, text_counterfactuals, top_token_masks)


def test_lexical_keeps_social_media_context_and_function_words():
    text = "@user this movie is SO great!!! #not 😂 emoji_12 http://t.co/x 10:30 love it"
    cf, positions = lexical_text_counterfactual(text, "[MASK]")
    assert cf == "@user this [MASK] is SO [MASK] #not 😂 emoji_12 http://t.co/x 10:30 [MASK] it"
    assert positions == [2, 5, 11]
    for word in ("#irony", "@bob", "!!!", "42", "the", "www.x.com", "emoji_3"):
        assert is_context_word(word), word
    assert not is_context_word("wonderful")


def test_given_and_saliency_builders_mask_the_chosen_words():
    assert given_text_counterfactual("a b c d", [3, 1], "X") == ("a X c X", [1, 3])
    with pytest.raises(ValueError, match="outside the text's 2 words"):
        given_text_counterfactual("a b", [5])
    cf, positions = saliency_text_counterfactual("a b c d", [0.1, 0.9, 0.5, 0.2], 0.5, "X")
    assert (cf, positions) == ("a X X d", [1, 2])
    with pytest.raises(ValueError, match="needs core word positions"):
        text_counterfactuals(["a"], "given")
    with pytest.raises(ValueError, match="needs a sentiment lexicon"):
        text_counterfactuals(["a"], "swap")


class _Lexicon:
    opposites = {"great": "terrible", "good": "bad"}

    def opposite(self, word, vocabulary=None):
        found = self.opposites.get(word)
        return found if vocabulary is None or found in vocabulary else None


def test_swap_replaces_sentiment_words_and_keeps_punctuation():
    cf, positions = swap_text_counterfactual("the movie was Great! #good day", _Lexicon())
    assert cf == "the movie was terrible! #bad day" and positions == [3, 4]
    assert swap_text_counterfactual("good", _Lexicon(), vocabulary={"x"}) == ("good", [])


def test_reversed_targets():
    assert torch.equal(reversed_targets(torch.tensor([0, 1]), 2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    three = reversed_targets(torch.tensor([2]), 3, "complement")
    assert torch.allclose(three, torch.tensor([[0.5, 0.5, 0.0]]))
    assert torch.allclose(reversed_targets(torch.tensor([2]), 3, "uniform"), torch.full((1, 3), 1 / 3))


def test_boxes_to_token_masks_cover_the_box():
    (mask,) = boxes_to_token_masks([[0.0, 0.0, 0.5, 0.5]], [(4, 4)])
    assert mask.reshape(4, 4)[:2, :2].all() and mask.sum() == 4
    (small,) = boxes_to_token_masks([[0.6, 0.6, 0.65, 0.65]], [(4, 4)])
    assert small.sum() == 1 and small.reshape(4, 4)[2, 2]
    with pytest.raises(ValueError, match="fractions of the image size"):
        boxes_to_token_masks([[0.5, 0.5, 0.2, 0.9]], [(4, 4)])


def test_top_token_masks_take_the_highest_scores():
    (mask,) = top_token_masks([torch.tensor([0.1, 0.9, 0.3, 0.8])], 0.5)
    assert mask.tolist() == [False, True, False, True]


def test_mask_image_tokens_fills_exactly_the_masked_patches(tiny_llava_model):
    model = tiny_llava_model
    inputs = build_triple(model.processor, model.config, TEXTS[:2], random_images(2), TEXTS[:2])["original"]
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[0, 5]] = True  # grid 4×4 of 8-px patches: cells (0,0) and (1,1)
    filled = mask_image_tokens(model.config, inputs, [mask, None])
    original = inputs["pixel_values"]
    mean = original[0].mean(dim=(1, 2))
    assert torch.allclose(filled[0, :, 0:8, 0:8], mean[:, None, None].expand(3, 8, 8))
    assert torch.allclose(filled[0, :, 8:16, 8:16], mean[:, None, None].expand(3, 8, 8))
    untouched = torch.ones(32, 32, dtype=torch.bool)
    untouched[0:8, 0:8] = untouched[8:16, 8:16] = False
    assert torch.equal(filled[0][:, untouched], original[0][:, untouched])
    assert torch.equal(filled[1], original[1])


def test_build_triple_null_other_modality(tiny_llava_model):
    model = tiny_llava_model
    cf_texts = [t for t, _ in text_counterfactuals(TEXTS, "lexical")]
    triple = build_triple(model.processor, model.config, TEXTS, random_images(4), cf_texts)
    lengths = {part["input_ids"].shape[1] for part in triple.values()}
    assert len(lengths) == 1  # one processor call, one padded length
    text_cf_pixels = triple["text_counterfactual"]["pixel_values"]
    # the text counterfactual's image is the flat image mean (every patch filled)
    assert torch.allclose(text_cf_pixels, text_cf_pixels.mean(dim=(2, 3), keepdim=True).expand_as(text_cf_pixels))
    tokenizer = model.processor.tokenizer
    image_cf_text = tokenizer.decode(triple["image_counterfactual"]["input_ids"][0], skip_special_tokens=True)
    assert "movie" not in image_cf_text and "question" in image_cf_text
    assert "[MASK]" in tokenizer.decode(triple["text_counterfactual"]["input_ids"][0])
