"""MMEJDModel on a tiny random LLaVA: no-op experts, every mode, routed inference."""

import pytest
import torch
from conftest import TEXTS, nudge_experts

from mme_jd.modeling.counterfactual_mme_jd import (apply_image_counterfactual, build_triple, text_counterfactuals,
                                                   top_token_masks)


def _triple(model, images, mask_ratio=0.25):
    cf_texts = [text for text, _ in text_counterfactuals(TEXTS, "lexical")]
    triple = build_triple(model.processor, model.config, TEXTS, images, cf_texts)
    saliency, _ = model.image_saliency(triple["original"], "attention")
    triple["image_counterfactual"] = apply_image_counterfactual(
        model.config, triple["image_counterfactual"], top_token_masks(saliency, mask_ratio)
    )
    return triple


def _plain_base_logits(model, inputs):
    """Class logits of the base model without any adapter, computed the long way (full LM head)."""
    with model.vlm.disable_adapter():
        full = model.vlm.get_base_model()(**inputs).logits
    last = inputs["attention_mask"].sum(1) - 1
    return full[torch.arange(len(last)), last][:, model.config.label_token_ids]


def test_fresh_experts_change_no_logit(tiny_llava_model, images):
    model = tiny_llava_model
    inputs = build_triple(model.processor, model.config, TEXTS, images, TEXTS)["original"]
    reference = _plain_base_logits(model, inputs)
    for expert in ("general", "image_debias", "text_debias"):
        logits = model(**inputs, expert=expert).logits
        assert torch.equal(logits, reference) or torch.allclose(logits, reference, atol=1e-6), expert
    nudge_experts(model)
    changed = model(**inputs, expert="text_debias").logits
    assert not torch.allclose(changed, reference, atol=1e-3)
    model.reset_experts()
    assert torch.allclose(model(**inputs, expert="text_debias").logits, reference, atol=1e-6)


def test_every_mode_gives_class_logits_and_a_loss(tiny_llava_model, images):
    model = tiny_llava_model
    nudge_experts(model)
    triple = _triple(model, images)
    labels = torch.tensor([1, 0, 0, 1])
    for mode in ("general", "mid", "mctd", "mme_jd"):
        out = model(**triple["original"], text_counterfactual=triple["text_counterfactual"],
                    image_counterfactual=triple["image_counterfactual"], labels=labels, mode=mode)
        assert out.logits.shape == (4, 2) and torch.isfinite(out.logits).all(), mode
        assert out.loss is not None and out.loss.item() > 0, mode


def test_mid_subtracts_the_counterfactual_logits(tiny_llava_model, images):
    model = tiny_llava_model
    nudge_experts(model)
    model.config.lambda_text, model.config.lambda_image = 0.3, 0.6
    triple = _triple(model, images)
    out = model(**triple["original"], text_counterfactual=triple["text_counterfactual"],
                image_counterfactual=triple["image_counterfactual"], mode="mid")
    general = model(**triple["original"], mode="general").logits
    text_cf = model(**triple["text_counterfactual"], mode="general").logits
    image_cf = model(**triple["image_counterfactual"], mode="general").logits
    assert torch.allclose(out.logits, general - 0.3 * text_cf - 0.6 * image_cf, atol=1e-5)
    assert torch.allclose(out.text_counterfactual_logits, text_cf, atol=1e-5)
    with pytest.raises(ValueError, match="mode='mid' needs text_counterfactual"):
        model(**triple["original"], mode="mid")


def test_mctd_loss_adds_the_reversed_counterfactual_terms(tiny_llava_model, images):
    model = tiny_llava_model
    nudge_experts(model)
    triple = _triple(model, images)
    labels = torch.tensor([1, 0, 0, 1])
    plain = model(**triple["original"], labels=labels, expert="general")
    full = model(**triple["original"], text_counterfactual=triple["text_counterfactual"],
                 image_counterfactual=triple["image_counterfactual"], labels=labels, expert="general")
    text_logits = model(**triple["text_counterfactual"], expert="general").logits
    image_logits = model(**triple["image_counterfactual"], expert="general").logits
    reversed_labels = 1 - labels
    expected = (plain.loss + torch.nn.functional.cross_entropy(text_logits, reversed_labels)
                + torch.nn.functional.cross_entropy(image_logits, reversed_labels))
    assert torch.allclose(full.loss, expected, atol=1e-5)


def _force_router(model, strategies):
    """Make the router's output depend only on a per-sample bias we control via the pooled state."""
    with torch.no_grad():
        for layer in (model.router.hidden, model.router.out):
            layer.weight.zero_()
            layer.bias.zero_()
        model.router.out.bias[strategies] = 10.0


def test_routed_inference_runs_debias_experts_only_on_routed_samples(tiny_llava_model, images):
    model = tiny_llava_model
    nudge_experts(model)
    inputs = build_triple(model.processor, model.config, TEXTS, images, TEXTS)["original"]
    everything = model(**inputs, mode="mme_jd", return_experts=True)
    calls = []
    hook = model.vlm.get_base_model().model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((model.active_expert, kwargs["input_ids"].shape[0])),
        with_kwargs=True,
    )
    try:
        _force_router(model, 0)  # every sample stays with `none`
        out = model(**inputs, mode="mme_jd")
        assert calls == [("general", 4)]
        assert (out.strategy == 0).all() and torch.isnan(out.image_debias_logits).all()
        assert torch.allclose(out.logits, everything.general_logits, atol=1e-5)

        calls.clear()
        _force_router(model, 3)  # every sample `both`: one batched pass per debias adapter
        out = model(**inputs, mode="mme_jd")
        assert calls == [("general", 4), ("image_debias", 4), ("text_debias", 4)]
        expected = (everything.image_debias_logits + everything.text_debias_logits) / 2
        assert torch.allclose(out.logits, expected, atol=1e-5)

        calls.clear()
        _force_router(model, 2)  # text
        out = model(**inputs, mode="mme_jd")
        assert calls == [("general", 4), ("text_debias", 4)]
        assert torch.allclose(out.logits, everything.text_debias_logits, atol=1e-5)
    finally:
        hook.remove()


def test_routed_subset_equals_the_full_expert_rows(tiny_llava_model, images):
    """Samples routed away are computed on a sub-batch; their logits equal the full batch's."""
    model = tiny_llava_model
    nudge_experts(model)
    inputs = build_triple(model.processor, model.config, TEXTS, images, TEXTS)["original"]
    everything = model(**inputs, mode="mme_jd", return_experts=True)
    model.config.router_threshold = 0.0  # everybody leaves `none`; choice among image/text/both
    with torch.no_grad():
        model.router.out.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    out = model(**inputs, mode="mme_jd")
    assert (out.strategy == 2).all()
    assert torch.allclose(out.text_debias_logits, everything.text_debias_logits, atol=1e-5)


def test_set_trainable_isolates_one_stage(tiny_llava_model):
    model = tiny_llava_model
    for stage in ("general", "image_debias", "text_debias", "router"):
        params = model.set_trainable(stage)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and len(trainable) == len(params)
        if stage == "router":
            assert all(n.startswith("router.") for n in trainable)
        else:
            assert all(f".{stage}." in n and ".lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="unknown training stage"):
        model.set_trainable("everything")


def test_switching_experts_keeps_the_trainable_flags_and_runs_the_named_adapter(tiny_llava_model, images):
    """Each expert's pass uses its own LoRA weights (the same as peft's public set_adapter
    path), and switching back and forth leaves what is trainable untouched."""
    model = tiny_llava_model.eval()
    nudge_experts(model, scale=0.3)
    inputs = build_triple(model.processor, model.config, TEXTS, images, None, parts=())["original"]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.set_trainable("image_debias")
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        fast = {name: model.expert_forward(name, inputs)[0] for name in ("text_debias", "general", "image_debias")}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == before
    assert not torch.allclose(fast["text_debias"], fast["general"])
    for name, logits in fast.items():  # the reference: peft's own model-wide adapter switch
        model.vlm.set_adapter(name)
        with torch.no_grad():
            reference = model._class_logits(name, _answer_hidden(model, inputs))
        assert torch.allclose(logits, reference, atol=1e-6), name
        assert model.active_expert == name
    model.vlm.set_adapter("general")
    for n, p in model.named_parameters():  # the shared fixture as it was
        p.requires_grad_(flags[n])


def test_the_expert_switch_restores_the_previous_expert_and_keeps_trainability(tiny_llava_model, images):
    """`with model.expert(name):` runs the base with that expert's adapter (the same logits as
    `expert=name`), puts the expert active before back on exit, also after an error, nests, and
    never changes which parameters are trainable."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = tiny_llava_model.eval()
    nudge_experts(model, scale=0.3)
    inputs = build_triple(model.processor, model.config, TEXTS, images, None, parts=())["original"]
    layers = [m for m in model.vlm.modules() if isinstance(m, BaseTunerLayer)]
    with torch.no_grad():
        expected = {name: model(**inputs, expert=name).logits for name in ("image_debias", "general")}
    assert model.active_expert == "general"
    for stage in ("text_debias", "router", None):
        if stage is None:
            model.freeze_all()
        else:
            model.set_trainable(stage)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        with model.expert("image_debias") as same:
            assert same is model and model.active_expert == "image_debias"
            assert all(layer.active_adapters == ["image_debias"] for layer in layers)
            with torch.no_grad():
                logits = model._class_logits("image_debias", _answer_hidden(model, inputs))
            with model.expert("text_debias"):
                assert model.active_expert == "text_debias"
            assert model.active_expert == "image_debias"
            assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
        assert torch.allclose(logits, expected["image_debias"], atol=1e-6)
        assert model.active_expert == "general" and all(layer.active_adapters == ["general"] for layer in layers)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    with pytest.raises(RuntimeError, match="inside"):
        with model.expert("text_debias"):
            raise RuntimeError("inside")
    assert model.active_expert == "general"
    with torch.no_grad():
        assert torch.allclose(model._class_logits("general", _answer_hidden(model, inputs)), expected["general"],
                              atol=1e-6)
    with pytest.raises(ValueError, match="unknown expert 'nobody'"):
        with model.expert("nobody"):
            pass
    model.freeze_all()


def test_a_debias_expert_trains_with_gradient_checkpointing(tiny_llava_model, images):
    """`expert_forward` leaves its expert active (unlike `with model.expert(...)`): gradient
    checkpointing recomputes the forward in the backward pass with the active adapter, so a
    debias expert's gradients are the same with and without it."""
    model = tiny_llava_model
    nudge_experts(model, scale=0.02)
    inputs = build_triple(model.processor, model.config, TEXTS, images, None, parts=())["original"]

    def gradients():
        model.zero_grad(set_to_none=True)
        params = model.set_trainable("text_debias")
        model.train()
        model(**inputs, labels=torch.tensor([1, 0, 0, 1]), expert="text_debias").loss.backward()
        return [p.grad.clone() for p in params]

    plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed = gradients()
    assert sum(g.abs().sum().item() for g in plain) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


def test_one_rule_names_an_experts_parameters(tiny_llava_model):
    from mme_jd.modeling.modeling_mme_jd import is_expert_parameter

    model = tiny_llava_model
    names = {expert: {n for n, _ in model.expert_parameters(expert)} for expert in ("general", "image_debias",
                                                                               "text_debias")}
    assert all(names.values()) and not (names["general"] & names["image_debias"])
    assert all(f".{e}." in n and ".lora_" in n for e, found in names.items() for n in found)
    lora = {n for n, _ in model.named_parameters() if ".lora_" in n}
    assert set().union(*names.values()) == lora
    assert is_expert_parameter("heads.text_debias.weight", "text_debias")
    assert not is_expert_parameter("heads.text_debias.weight", "general")
    assert not is_expert_parameter("router.out.weight", "general")
    with pytest.raises(ValueError, match="unknown expert"):
        list(model.expert_parameters("router"))


def _answer_hidden(model, inputs):
    inner = model.base_model_with_experts.model
    hidden = inner(**inputs, use_cache=False, return_dict=True).last_hidden_state
    last = inputs["attention_mask"].sum(1) - 1
    return hidden[torch.arange(len(last)), last]


def test_routing_every_sample_to_one_expert_skips_the_general_pass(tiny_llava_model, images):
    model = tiny_llava_model.eval()
    nudge_experts(model, scale=0.3)
    inputs = build_triple(model.processor, model.config, TEXTS, images, None, parts=())["original"]
    model.config.routed_strategy, model.config.router_threshold = "text", 0.0
    assert model.single_routed_expert == "text_debias"
    calls = []
    original = model.expert_forward
    model.expert_forward = lambda name, *args, **kwargs: calls.append(name) or original(name, *args, **kwargs)
    try:
        with torch.no_grad():
            fast = model(**inputs, mode="mme_jd", labels=torch.tensor([1, 0, 1, 0]))
            calls_fast = list(calls)
            calls.clear()
            full = model(**inputs, mode="mme_jd", return_experts=True, labels=torch.tensor([1, 0, 1, 0]))
    finally:
        del model.expert_forward
    assert calls_fast == ["text_debias"] and calls == ["general", "image_debias", "text_debias"]
    assert torch.equal(fast.strategy, full.strategy) and (fast.strategy == 2).all()
    assert torch.allclose(fast.logits, full.logits, atol=1e-6) and torch.isclose(fast.loss, full.loss)
    assert torch.isnan(fast.general_logits).all() and torch.isnan(fast.router_logits).all()
    model.config.router_threshold = 0.1
    assert model.single_routed_expert is None


def test_inference_runs_each_counterfactual_cut_to_its_own_longest_row(tiny_llava_model, images):
    """Without gradients the originals and each counterfactual run as separate passes, each
    without the padding columns no row of it attends to; the logits equal the joined pass's."""
    model = tiny_llava_model.eval()
    nudge_experts(model)
    model.config.lambda_text, model.config.lambda_image = 0.3, 0.6
    triple = _triple(model, images)
    text_cf = dict(triple["text_counterfactual"])
    width = text_cf["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask"):  # padded 7 columns wider than its longest row
        text_cf[key] = torch.nn.functional.pad(text_cf[key], (0, 7), value=0)
    kwargs = dict(**triple["original"], text_counterfactual=text_cf,
                  image_counterfactual=triple["image_counterfactual"], mode="mid")
    joined = model(**kwargs)  # gradients on: one pass over the three parts joined
    widths = []
    hook = model.vlm.get_base_model().model.register_forward_pre_hook(
        lambda module, args, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        with torch.no_grad():
            separate = model(**kwargs)
    finally:
        hook.remove()
    longest = [int(part["attention_mask"].sum(1).max()) for part in
               (triple["original"], triple["text_counterfactual"], triple["image_counterfactual"])]
    assert longest[1] == width and [tuple(shape) for shape in widths] == [(4, n) for n in longest]
    for key in ("logits", "general_logits", "text_counterfactual_logits", "image_counterfactual_logits",
                "pooled_hidden_state"):
        assert torch.allclose(getattr(separate, key), getattr(joined, key), atol=1e-5), key


def test_a_skipped_expert_is_not_run_and_gives_the_general_logits(tiny_llava_model, images):
    from mme_jd.training.stages import copy_expert

    model = tiny_llava_model.eval()
    nudge_experts(model)
    copy_expert(model, "general", "image_debias")  # what a training run leaves in a skipped expert
    inputs = build_triple(model.processor, model.config, TEXTS, images, None, parts=())["original"]
    with torch.no_grad():
        computed = model(**inputs, mode="mme_jd", return_experts=True)
    model.config.skipped_experts = ["image_debias"]
    calls = []
    original = model.expert_forward
    model.expert_forward = lambda name, *args, **kwargs: calls.append(name) or original(name, *args, **kwargs)
    try:
        with torch.no_grad():
            reused = model(**inputs, mode="mme_jd", return_experts=True)
    finally:
        del model.expert_forward
        model.config.skipped_experts = None
    assert calls == ["general", "text_debias"]
    assert torch.equal(reused.image_debias_logits, reused.general_logits)
    assert torch.allclose(computed.image_debias_logits, reused.image_debias_logits, atol=1e-6)
    assert torch.equal(computed.logits, reused.logits) or torch.allclose(computed.logits, reused.logits, atol=1e-6)


def test_autocast_runs_the_base_in_bfloat16_and_keeps_weights_heads_and_logits_float32(tiny_llava_model, images):
    """`autocast_dtype="bfloat16"`: the base's linear layers (LoRA too) compute in bfloat16; the
    logits, the loss and the trained weights' gradients are float32, and the logits stay near
    the float32 ones (mixed precision, not another model)."""
    model = tiny_llava_model
    nudge_experts(model)
    inputs = build_triple(model.processor, model.config, TEXTS, images, TEXTS)["original"]
    labels = torch.tensor([1, 0, 0, 1])
    reference = model(**inputs, expert="general").logits
    seen: list[torch.dtype] = []
    layer = next(m for name, m in model.vlm.named_modules() if name.endswith("q_proj.lora_A.general"))
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    model.config.autocast_dtype = "bfloat16"
    try:
        mixed = model(**inputs, expert="general").logits
        model.train()
        params = model.set_trainable("general")
        loss = model(**inputs, labels=labels, expert="general").loss
        loss.backward()
    finally:
        handle.remove()
        model.config.autocast_dtype = None
        model.eval()
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert mixed.dtype == torch.float32 and loss.dtype == torch.float32
    assert not torch.equal(mixed, reference) and torch.allclose(mixed, reference, atol=0.05, rtol=0.05)
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and p.dtype == torch.float32 for p, g in zip(params, grads))
    assert any(g.abs().sum() > 0 for g in grads)
    # back to None: the float32 pass again, bit for bit
    assert torch.equal(model(**inputs, expert="general").logits, reference)


def test_native_autocast_dtype_names_a_dtype_the_config_accepts():
    from mme_jd import MMEJDConfig, native_autocast_dtype

    for device in ("cpu", "cuda"):
        dtype = native_autocast_dtype(device)
        assert dtype in (None, "bfloat16")
        MMEJDConfig(autocast_dtype=dtype)  # accepted
    assert native_autocast_dtype("mps") is None  # no claim for a device it does not know
