"""Image layouts: how a base family's `pixel_values` hold its image tokens.

Image counterfactuals and image saliency work on image tokens; the processor gives pixels. A
layout joins the two for one kind of base, in four operations:

    token_grids      the (rows, cols) grid of image tokens of each sample's image
    mask_tokens      a copy of pixel_values with chosen image tokens' pixels filled
    pool_per_token   a pixel-shaped score (|gradient × input|) summed over each image token
    pixel rows       which rows of pixel_values belong to which sample (`pixel_row_bounds`):
                     a sub-batch's rows (`select_pixels`), a batch cut into parts (`split_pixels`)

    GRID         GridLayout: pixel_values [B, ..., C, H, W], one entry per sample; a sample's
                 image tokens form a square grid over H × W (LLaVA, PaliGemma, Gemma 3, Idefics3
                 and SmolVLM without image splitting)
    MERGED_ROWS  MergedRowsLayout: pixel_values [patches, C·T·P·P] for the whole batch with
                 `image_grid_thw` [B, 3]; one image token is merge_size² consecutive rows
                 (Qwen2-VL, Qwen2.5-VL)

Each family names its layout in `BASE_FAMILIES` (configuration_mme_jd.py); a base with another
layout needs one more subclass of `ImageLayout` here. Layouts hold no state: they read what they
need from the `MMEJDConfig` they are given (the image-token id, the base's vision config).

Hub remote code: imports only torch and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .configuration_mme_jd import MMEJDConfig


class ImageLayout:
    """The four operations on one layout of `pixel_values` (see the module docstring).

    Subclasses implement `token_grids`, `mask_tokens` and `pool_per_token`; one whose
    pixel_values are not one entry per sample along dim 0 also overrides `pixel_row_bounds`.
    Token masks and scores are row-major over a sample's (rows, cols) grid.
    """

    name = "layout"

    def token_grids(self, config: MMEJDConfig, inputs: dict) -> list[tuple[int, int]]:
        """The (rows, cols) grid of image tokens of each sample's image."""
        raise NotImplementedError

    def mask_tokens(
        self, config: MMEJDConfig, inputs: dict, token_masks: Sequence[torch.Tensor | None], fill: str
    ) -> torch.Tensor:
        """A copy of `inputs["pixel_values"]` where sample i's image tokens with
        `token_masks[i]` True are filled ("mean": the image's channel mean, "zero"); a None
        mask leaves that image unchanged."""
        raise NotImplementedError

    def pool_per_token(self, config: MMEJDConfig, inputs: dict, scores: torch.Tensor) -> list[torch.Tensor]:
        """Per sample, `scores` (shaped like pixel_values) summed over each image token."""
        raise NotImplementedError

    def pixel_row_bounds(self, inputs: dict) -> list[int] | None:
        """Where each sample's rows of pixel_values begin along dim 0, and where the last ends
        (B + 1 offsets). Here: one row per sample when dim 0 is the batch; None when it is not
        (the rows are not split by sample: every sub-batch keeps them all)."""
        batch = inputs["input_ids"].shape[0]
        return list(range(batch + 1)) if inputs["pixel_values"].shape[0] == batch else None

    def select_pixels(self, inputs: dict, samples: torch.Tensor) -> torch.Tensor:
        """The pixel_values rows of the samples at the indices `samples`, in that order."""
        pixels = inputs["pixel_values"]
        bounds = self.pixel_row_bounds(inputs)
        if bounds is None:
            return pixels
        index = [torch.arange(bounds[s], bounds[s + 1], device=pixels.device) for s in samples.tolist()]
        return pixels[torch.cat(index) if index else torch.zeros(0, dtype=torch.long, device=pixels.device)]

    def split_pixels(self, inputs: dict, parts: int) -> list[torch.Tensor]:
        """The pixel_values of a batch of parts·B samples cut into `parts` batches of B samples."""
        pixels = inputs["pixel_values"]
        bounds = self.pixel_row_bounds(inputs)
        if bounds is None:
            raise ValueError(
                f"pixel_values holds {pixels.shape[0]} entries for {inputs['input_ids'].shape[0]} samples; "
                f"the {self.name} layout needs one image per sample."
            )
        batch = inputs["input_ids"].shape[0] // parts
        return [pixels[bounds[p * batch] : bounds[(p + 1) * batch]] for p in range(parts)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GridLayout(ImageLayout):
    """pixel_values [B, ..., C, H, W]; the image tokens of one image form a square grid over
    H × W, as many as the sample's image tokens in `input_ids`."""

    name = "grid"

    def token_grids(self, config: MMEJDConfig, inputs: dict) -> list[tuple[int, int]]:
        counts = (inputs["input_ids"] == config.image_token_id).sum(dim=1).tolist()
        text_only_allowed = config.image_less_rows == "text_only"  # (0, 0): a row without an image
        grids = []
        for count in counts:
            side = math.isqrt(int(count))
            if side * side != count or (count == 0 and not text_only_allowed):
                raise ValueError(
                    f"a sample has {count} image tokens, not a square grid of one image; image counterfactuals "
                    "need one image per sample without tiling (for Idefics3/SmolVLM set do_image_splitting=False)."
                )
            grids.append((side, side))
        return grids

    def mask_tokens(
        self, config: MMEJDConfig, inputs: dict, token_masks: Sequence[torch.Tensor | None], fill: str
    ) -> torch.Tensor:
        pixels = inputs["pixel_values"].clone()
        for index, (mask, (rows, cols)) in enumerate(zip(token_masks, self.token_grids(config, inputs))):
            if mask is None or rows == 0:  # rows == 0: a text-only sample (`image_less_rows`)
                continue
            image = pixels[index]  # [..., C, H, W]
            height, width = image.shape[-2:]
            value = image.mean(dim=(-2, -1), keepdim=True) if fill == "mean" else torch.zeros_like(image[..., :1, :1])
            pixel_mask = mask.reshape(rows, cols).to(pixels.device)
            pixel_mask = pixel_mask.repeat_interleave(math.ceil(height / rows), 0)[:height]
            pixel_mask = pixel_mask.repeat_interleave(math.ceil(width / cols), 1)[:, :width]
            pixels[index] = torch.where(pixel_mask, value.expand_as(image), image)
        return pixels

    def pool_per_token(self, config: MMEJDConfig, inputs: dict, scores: torch.Tensor) -> list[torch.Tensor]:
        pooled_scores = []
        for index, (rows, cols) in enumerate(self.token_grids(config, inputs)):
            if rows == 0:
                pooled_scores.append(scores.new_zeros(0))
                continue
            image = scores[index].reshape(-1, *scores.shape[-2:]).sum(0)  # [H, W]
            height, width = image.shape
            pooled = F.adaptive_avg_pool2d(image[None, None], (rows, cols))[0, 0]
            pooled_scores.append(pooled.flatten() * height * width / (rows * cols))
        return pooled_scores


class MergedRowsLayout(ImageLayout):
    """pixel_values [patches, C·T·P·P] for the whole batch, sample after sample, each image's
    patches in merge groups: one image token is merge_size² consecutive rows, and the grid
    of image `i` is `image_grid_thw[i]` (in patches) divided by the merge size."""

    name = "merged_rows"

    @staticmethod
    def merge_size(config: MMEJDConfig) -> int:
        """Patches per side of one image token: the vision config's `spatial_merge_size`."""
        return int(getattr(config.base_config.vision_config, "spatial_merge_size", 2))

    def token_grids(self, config: MMEJDConfig, inputs: dict) -> list[tuple[int, int]]:
        merge = self.merge_size(config)
        grids = []
        for t, h, w in inputs["image_grid_thw"].tolist():
            if t != 1:
                raise ValueError("image counterfactuals support single-frame images only (temporal grid 1).")
            grids.append((h // merge, w // merge))
        return grids

    def _token_blocks(self, config: MMEJDConfig, inputs: dict):
        """(start row, rows of the image, (rows, cols) grid, merge size) of each sample's image."""
        merge = self.merge_size(config)
        start = 0
        for rows, cols in self.token_grids(config, inputs):
            count = rows * cols * merge * merge
            yield start, count, (rows, cols), merge
            start += count

    def mask_tokens(
        self, config: MMEJDConfig, inputs: dict, token_masks: Sequence[torch.Tensor | None], fill: str
    ) -> torch.Tensor:
        pixels = inputs["pixel_values"].clone()
        channels = int(getattr(config.base_config.vision_config, "in_channels", 3))
        for mask, (start, count, _, merge) in zip(token_masks, self._token_blocks(config, inputs)):
            if mask is None:
                continue
            block = pixels[start : start + count]
            value = 0.0
            if fill == "mean":
                value = block.reshape(count, channels, -1).mean(dim=(0, 2))
                value = value[:, None].expand(channels, block.shape[1] // channels).reshape(-1)
            block[mask.to(pixels.device).repeat_interleave(merge * merge)] = value
        return pixels

    def pool_per_token(self, config: MMEJDConfig, inputs: dict, scores: torch.Tensor) -> list[torch.Tensor]:
        per_row = scores.sum(dim=1)
        return [
            per_row[start : start + count].reshape(rows * cols, merge * merge).sum(1)
            for start, count, (rows, cols), merge in self._token_blocks(config, inputs)
        ]

    def pixel_row_bounds(self, inputs: dict) -> list[int]:
        rows = inputs["image_grid_thw"].prod(dim=1)
        return [0, *torch.cumsum(rows, 0).tolist()]


GRID = GridLayout()
MERGED_ROWS = MergedRowsLayout()

__all__ = ["GRID", "MERGED_ROWS", "GridLayout", "ImageLayout", "MergedRowsLayout"]
