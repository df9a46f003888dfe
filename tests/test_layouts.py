"""Image layouts (modeling/layouts_mme_jd.py): each layout's four operations on small tensors,
and a base family being one row of `BASE_FAMILIES` that every image operation goes through."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TEXTS, nudge_experts, random_images

from mme_jd.modeling.configuration_mme_jd import BASE_FAMILIES, BaseFamily, base_family
from mme_jd.modeling.counterfactual_mme_jd import apply_image_counterfactual, build_triple, text_counterfactuals
from mme_jd.modeling.layouts_mme_jd import GRID, MERGED_ROWS, GridLayout
from mme_jd.modeling.modeling_mme_jd import select_rows

MODELING = Path(__file__).resolve().parents[1] / "modeling"
IMAGE = 9


def _config(**vision):
    return SimpleNamespace(image_token_id=IMAGE, image_less_rows="stand_in",
                           base_config=SimpleNamespace(vision_config=SimpleNamespace(**vision)))


def test_grid_layout_operations():
    config = _config()
    input_ids = torch.tensor([[1, IMAGE, IMAGE, IMAGE, IMAGE, 2], [0, 1, IMAGE, IMAGE, IMAGE, IMAGE]])
    pixels = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    inputs = {"input_ids": input_ids, "pixel_values": pixels}
    assert GRID.token_grids(config, inputs) == [(2, 2), (2, 2)]

    filled = GRID.mask_tokens(config, inputs, [torch.tensor([True, False, False, True]), None], "mean")
    mean = pixels[0].mean(dim=(1, 2))[:, None, None]
    assert torch.equal(filled[0, :, :2, :2], mean.expand(3, 2, 2))
    assert torch.equal(filled[0, :, 2:, 2:], mean.expand(3, 2, 2))
    assert torch.equal(filled[0, :, :2, 2:], pixels[0, :, :2, 2:])
    assert torch.equal(filled[1], pixels[1])
    zeroed = GRID.mask_tokens(config, inputs, [None, torch.tensor([False, True, False, False])], "zero")
    assert (zeroed[1, :, :2, 2:] == 0).all() and torch.equal(zeroed[0], pixels[0])
    assert torch.equal(inputs["pixel_values"], pixels)  # a copy is filled

    scores = GRID.pool_per_token(config, inputs, torch.ones_like(pixels))
    assert [s.tolist() for s in scores] == [[12.0] * 4] * 2  # 3 channels × 2 × 2 pixels per token

    assert GRID.pixel_row_bounds(inputs) == [0, 1, 2]
    assert torch.equal(GRID.select_pixels(inputs, torch.tensor([1, 0])), pixels[[1, 0]])
    halves = GRID.split_pixels(inputs, 2)
    assert torch.equal(halves[0], pixels[:1]) and torch.equal(halves[1], pixels[1:])


def test_grid_layout_text_only_rows():
    """A sample without image tokens is an error with the grey stand-in (every row has an image)
    and a (0, 0) grid with `image_less_rows="text_only"`: nothing to fill, nothing to score."""
    input_ids = torch.tensor([[1, IMAGE, IMAGE, IMAGE, IMAGE, 2], [1, 5, 6, 2, 0, 0]])
    pixels = torch.rand(2, 3, 4, 4)
    inputs = {"input_ids": input_ids, "pixel_values": pixels}
    with pytest.raises(ValueError, match="a sample has 0 image tokens"):
        GRID.token_grids(_config(), inputs)
    config = _config()
    config.image_less_rows = "text_only"
    assert GRID.token_grids(config, inputs) == [(2, 2), (0, 0)]
    filled = GRID.mask_tokens(config, inputs, [torch.ones(4, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)],
                              "zero")
    assert (filled[0] == 0).all() and torch.equal(filled[1], pixels[1])
    scores = GRID.pool_per_token(config, inputs, torch.ones_like(pixels))
    assert [s.numel() for s in scores] == [4, 0]


def test_merged_rows_layout_operations():
    config = _config(spatial_merge_size=2, in_channels=3)
    # sample 0: a 2×2-patch image (1 token, 4 rows); sample 1: 4×2 patches (2 tokens, 8 rows)
    grid_thw = torch.tensor([[1, 2, 2], [1, 4, 2]])
    pixels = torch.arange(12 * 6, dtype=torch.float32).reshape(12, 6)  # C=3 × T·P·P=2
    inputs = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "pixel_values": pixels, "image_grid_thw": grid_thw}
    assert MERGED_ROWS.token_grids(config, inputs) == [(1, 1), (2, 1)]
    assert MERGED_ROWS.token_grids(_config(spatial_merge_size=1), inputs) == [(2, 2), (4, 2)]

    filled = MERGED_ROWS.mask_tokens(config, inputs, [None, torch.tensor([False, True])], "mean")
    channel_means = pixels[4:12].reshape(8, 3, 2).mean(dim=(0, 2))
    assert torch.equal(filled[8:12], channel_means.repeat_interleave(2).expand(4, 6))
    assert torch.equal(filled[:8], pixels[:8])
    zeroed = MERGED_ROWS.mask_tokens(config, inputs, [torch.tensor([True]), None], "zero")
    assert (zeroed[:4] == 0).all() and torch.equal(zeroed[4:], pixels[4:])

    scores = MERGED_ROWS.pool_per_token(config, inputs, torch.ones_like(pixels))
    assert [s.tolist() for s in scores] == [[24.0], [24.0, 24.0]]  # 4 rows × 6 values per token

    assert MERGED_ROWS.pixel_row_bounds(inputs) == [0, 4, 12]
    assert torch.equal(MERGED_ROWS.select_pixels(inputs, torch.tensor([1, 0])), torch.cat([pixels[4:], pixels[:4]]))
    assert MERGED_ROWS.select_pixels(inputs, torch.tensor([], dtype=torch.long)).shape == (0, 6)
    first, second = MERGED_ROWS.split_pixels(inputs, 2)
    assert torch.equal(first, pixels[:4]) and torch.equal(second, pixels[4:])
    subset = select_rows(inputs, torch.tensor([1]), MERGED_ROWS)
    assert torch.equal(subset["pixel_values"], pixels[4:]) and subset["image_grid_thw"].tolist() == [[1, 4, 2]]


def test_families_name_their_layout():
    assert base_family("qwen2_vl").layout is MERGED_ROWS and base_family("qwen2_5_vl").layout is MERGED_ROWS
    assert base_family("llava").layout is GRID and base_family("idefics3").layout is GRID
    assert base_family("unknown-vlm").layout is GRID


class RecordingGrid(GridLayout):
    """The grid layout, recording which operations ran."""

    def __init__(self):
        self.calls = set()

    def token_grids(self, config, inputs):
        self.calls.add("token_grids")
        return super().token_grids(config, inputs)

    def mask_tokens(self, config, inputs, token_masks, fill):
        self.calls.add("mask_tokens")
        return super().mask_tokens(config, inputs, token_masks, fill)

    def pool_per_token(self, config, inputs, scores):
        self.calls.add("pool_per_token")
        return super().pool_per_token(config, inputs, scores)

    def select_pixels(self, inputs, samples):
        self.calls.add("select_pixels")
        return super().select_pixels(inputs, samples)

    def split_pixels(self, inputs, parts):
        self.calls.add("split_pixels")
        return super().split_pixels(inputs, parts)


def test_a_family_is_one_table_row(tiny_llava_model, monkeypatch):
    """A row of BASE_FAMILIES is all a family needs: its layout serves the counterfactual
    builders, the gradient saliency and the routed sub-batches, with unchanged results."""
    model = tiny_llava_model.eval()
    nudge_experts(model)
    model.config.router_threshold = 0.0
    images = random_images(len(TEXTS))
    cf_texts = [t for t, _ in text_counterfactuals(TEXTS, "lexical")]

    def run():
        triple = build_triple(model.processor, model.config, TEXTS, images, cf_texts)
        saliency, _ = model.image_saliency(triple["original"], "gradient")
        masks = [s >= s.median() for s in saliency]
        image_cf = apply_image_counterfactual(model.config, triple["image_counterfactual"], masks)
        with torch.no_grad():  # threshold 0: every sample leaves `none`, experts run on sub-batches
            routed = model(**triple["original"], mode="mme_jd").logits
        return [triple["text_counterfactual"]["pixel_values"], image_cf["pixel_values"], *saliency, routed]

    expected = run()
    layout = RecordingGrid()
    monkeypatch.setitem(BASE_FAMILIES, "llava", BaseFamily("<image>", layout))
    assert model.config.family.layout is layout
    got = run()
    assert layout.calls == {"token_grids", "mask_tokens", "pool_per_token", "select_pixels", "split_pixels"}
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_layout_facts_are_read_in_the_layouts_file_only():
    for path in MODELING.glob("*.py"):
        source = path.read_text()
        if path.name != "layouts_mme_jd.py":
            assert "spatial_merge_size" not in source and "image_grid_thw\"].prod" not in source, path.name
    assert (MODELING / "layouts_mme_jd.py").read_text().count('"spatial_merge_size"') == 1
