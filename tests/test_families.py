"""Every mode end to end on tiny random LLaVA, Qwen2-VL and Idefics3: nothing is LLaVA-only."""

import pytest
import torch
from conftest import TEXTS, nudge_experts, random_images
from families import FAMILIES

from mme_jd.base import from_base
from mme_jd.modeling.counterfactual_mme_jd import (apply_image_counterfactual, build_triple, text_counterfactuals,
                                                   top_token_masks)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_mode_on_each_family(family):
    base, processor = FAMILIES[family]()
    model = from_base(base, processor).eval()
    assert model.config.base_config.model_type == family
    nudge_experts(model, scale=0.2)
    images = random_images(len(TEXTS), size=36)
    cf_texts = [text for text, _ in text_counterfactuals(TEXTS, "lexical")]
    triple = build_triple(processor, model.config, TEXTS, images, cf_texts)
    for strategy in ("attention", "gradient"):
        saliency, logits = model.image_saliency(triple["original"], strategy)
        assert len(saliency) == len(TEXTS) and all(s.numel() >= 4 for s in saliency)
        assert logits.shape == (len(TEXTS), 2)
    masks = top_token_masks(saliency, 0.25)
    image_cf = apply_image_counterfactual(model.config, triple["image_counterfactual"], masks)
    assert not torch.equal(image_cf["pixel_values"], triple["image_counterfactual"]["pixel_values"])
    labels = torch.tensor([1, 0, 1, 0])
    results = {}
    for mode in ("general", "mid", "mctd", "mme_jd"):
        out = model(**triple["original"], text_counterfactual=triple["text_counterfactual"],
                    image_counterfactual=image_cf, labels=labels, mode=mode)
        assert out.logits.shape == (4, 2) and torch.isfinite(out.logits).all()
        assert torch.isfinite(out.loss)
        results[mode] = out
    assert not torch.allclose(results["mid"].logits, results["general"].logits)
    routed_all = model(**triple["original"], mode="mme_jd", return_experts=True)
    for name in ("general_logits", "image_debias_logits", "text_debias_logits"):
        assert torch.isfinite(getattr(routed_all, name)).all()
    # a routed sub-batch gives the same rows as the full batch (pixel rows of Qwen2-VL included)
    model.config.router_threshold = 0.0
    with torch.no_grad():
        model.router.out.bias.copy_(torch.tensor([0.0, 9.0, 0.0, 0.0]))
        model.router.out.weight.zero_()
    out = model(**triple["original"], mode="mme_jd")
    assert (out.strategy == 1).all()
    assert torch.allclose(out.logits, routed_all.image_debias_logits, atol=1e-4)
    # training one expert: a backward pass reaches only that expert's LoRA weights
    model.train()
    params = model.set_trainable("image_debias")
    out = model(**triple["original"], labels=labels, expert="image_debias",
                text_counterfactual=triple["text_counterfactual"], image_counterfactual=image_cf)
    out.loss.backward()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in model.named_parameters() if ".general." in n)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_routed_experts_reuse_the_general_pass_image_features(family):
    """The debias experts' passes take the vision features of the general pass (the vision tower
    runs once per batch) and give the same logits as encoding the pixels again."""
    base, processor = FAMILIES[family]()
    model = from_base(base, processor).eval()
    nudge_experts(model, scale=0.2)
    images = random_images(len(TEXTS), size=36)
    inputs = build_triple(processor, model.config, TEXTS, images, None, parts=())["original"]
    model.config.router_threshold = 0.0
    with torch.no_grad():  # every row leaves `none`
        model.router.out.weight.zero_()
        model.router.out.bias.copy_(torch.tensor([0.0, 9.0, 0.0, 0.0]))
    vision = model.base_model_with_experts.model.get_image_features.__self__
    calls = []
    tower = next(m for n, m in vision.named_children() if n in ("vision_tower", "visual", "vision_model"))
    handle = tower.register_forward_hook(lambda *_: calls.append(1))
    try:
        results = {}
        for reuse in (True, False):
            model.config.reuse_image_features = reuse
            calls.clear()
            with torch.no_grad():
                results[reuse] = model(**inputs, mode="mme_jd", return_experts=True)
            results[(reuse, "calls")] = len(calls)
    finally:
        handle.remove()
    assert results[(True, "calls")] == 1 and results[(False, "calls")] == 3
    for name in ("logits", "general_logits", "image_debias_logits", "text_debias_logits"):
        assert torch.allclose(getattr(results[True], name), getattr(results[False], name), atol=1e-5), name
    assert not torch.allclose(results[True].image_debias_logits, results[True].general_logits)
    # an expert pass without the pixels but with the features gives the same rows
    from mme_jd.modeling.modeling_mme_jd import _ImageFeatureCapture

    rows = torch.tensor([2, 0])
    captured: list = []
    with torch.no_grad(), _ImageFeatureCapture(model.base_model_with_experts.model, captured):
        model.expert_forward("general", inputs)
    features = model._select_image_features(captured, rows, len(TEXTS))
    assert features is not None
    with torch.no_grad():
        from mme_jd.modeling.modeling_mme_jd import select_rows
        subset = select_rows(inputs, rows, model.config.family.layout)
        with_features = model.expert_forward("text_debias", subset, image_features=features)[0]
        with_pixels = model.expert_forward("text_debias", subset)[0]
    assert torch.allclose(with_features, with_pixels, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rows_without_an_image_where_the_layout_allows_text_only_rows(family):
    """from_base makes image-less rows text only on one-image-per-sample layouts (LLaVA,
    Idefics3) and keeps the grey stand-in on Qwen2-VL, whose patches are batched for the whole
    batch; asking for text-only rows there is a clear error. Either way a mixed batch runs."""
    from mme_jd.data.collator import CounterfactualTripleCollator
    from mme_jd.modeling.configuration_mme_jd import MMEJDConfig

    base, processor = FAMILIES[family]()
    model = from_base(base, processor).eval()
    grid = family != "qwen2_vl"
    assert model.config.image_less_rows == ("text_only" if grid else "stand_in")
    if not grid:
        with pytest.raises(ValueError, match="image_less_rows='text_only' needs a base with one image per sample"):
            MMEJDConfig(base_config=base.config, image_less_rows="text_only")
    rows = [{"text": text, "image": image if i % 2 else None, "image_description": "dog park", "label": i % 2}
            for i, (text, image) in enumerate(zip(TEXTS, random_images(len(TEXTS), size=36)))]
    batch = CounterfactualTripleCollator(processor, model.config, include_counterfactuals=False)(rows)
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert (image_tokens[0::2] == 0).all() == grid and (image_tokens[1::2] > 0).all()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k not in ("metadata", "labels")}, mode="general").logits
    assert torch.isfinite(logits).all() and logits.shape == (len(TEXTS), 2)
