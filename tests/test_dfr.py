"""DFR (`training.peers.train_dfr`): the general expert's linear head refitted on group-balanced
validation rows, the LoRA weights left as they were."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mme_jd.data.synthetic import make_synthetic_benchmark
from mme_jd.tiny import tiny_model
from mme_jd.training.peers import balanced_subset, head_inputs, train_dfr


@pytest.fixture(scope="module")
def rows():
    rows = make_synthetic_benchmark(num_train=8, num_validation_balanced=64, seed=4,
                                    splits=["train", "validation_balanced"])["validation_balanced"]
    # texts of many lengths: a pass in length order would not be the rows' order
    return rows.map(lambda row, i: {"text": row["text"] + " very" * (i % 7)}, with_indices=True)


def test_a_balanced_subset_takes_the_smallest_groups_size_from_every_group():
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    index = balanced_subset(groups, torch.Generator().manual_seed(0))
    assert torch.bincount(groups[index]).tolist() == [2, 2, 2]
    assert len(set(index.tolist())) == 6 and index.tolist() == sorted(index.tolist())


def test_dfr_refits_only_the_general_head_to_the_balanced_optimum(rows):
    model = tiny_model(head="linear").eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    features, outputs = head_inputs(model, model.processor, rows)
    assert features.shape == (len(rows), model.config.text_config.hidden_size)
    with torch.no_grad():  # row i's features are row i's: the head gives its logits back
        assert torch.allclose(model.heads["general"](features), outputs["logits"], atol=1e-5)
    index = balanced_subset(outputs["groups"], torch.Generator().manual_seed(0))

    def objective(weight, bias):  # what train_dfr minimises on the subset its seed draws
        x, y = features[index], outputs["labels"][index]
        return float(F.cross_entropy(x @ weight.T + bias, y) + weight.pow(2).sum() / 2)

    head = model.heads["general"]
    start = objective(head.weight.detach(), head.bias.detach())
    log = train_dfr(model, model.processor, rows, l2=1.0, subsets=1, seed=0)
    assert log["groups"] == 8 and log["subset_rows"] == len(index)
    assert objective(head.weight.detach(), head.bias.detach()) < start - 1e-3
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert changed == {"heads.general.weight", "heads.general.bias"}
    fitted = {name: model.state_dict()[name].clone() for name in changed}

    # given the head's inputs (fits at several l2 share them), it runs no pass and fits the same head
    model.load_state_dict(before)
    passes = []
    hook = model.register_forward_pre_hook(lambda module, args: passes.append(1))
    try:
        train_dfr(model, None, rows, l2=1.0, subsets=1, seed=0, inputs=(features, outputs))
    finally:
        hook.remove()
    assert passes == [] and all(torch.equal(model.state_dict()[name], fitted[name]) for name in changed)


def test_dfr_names_what_it_needs(rows):
    with pytest.raises(ValueError, match="retrains a linear class head.*head='linear'"):
        train_dfr(tiny_model(), None, rows)
    model = tiny_model(head="linear")
    with pytest.raises(ValueError, match="DFR needs groups"):
        train_dfr(model, model.processor, rows.remove_columns("group"))
