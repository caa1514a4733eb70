"""Data augmentation of training batches, batched on the training device.

Every op draws its own random values per image (whether it applies, the angle, the offset…)
for the whole batch at once, from a generator seeded with (seed, epoch, step): a batch's
augmentation depends on nothing else, so a resumed run, or the closure that L-BFGS evaluates
several times per step, sees the same augmented batch again.

torchvision.transforms.v2 applies one random draw to a whole batch tensor, so per-image
randomness means one call per image; that costs about as much as the training step itself
for small images (see docs/regularization.md for the measurements). Here consecutive geometric
ops (flips, rotation, crop, translation, scaling) fuse into one affine map per image and one
grid_sample for the batch.

The ops work on the images as they were loaded (before standardization), so padding and
rotated-in corners are black (0) as torchvision pads them, and brightness scales the real
intensities; the batch is standardized again afterwards with the training statistics.
Tabular rows of an image dataset (an MLP on digits) are viewed as their images for this.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F

from core.spec import GEOMETRIC_OPS, AugmentationOp, ColorJitter, Crop, Cutout, Translate

# Luma weights (ITU-R BT.601), as torchvision's rgb_to_grayscale uses.
_GREY = (0.299, 0.587, 0.114)
# RGB → YIQ; hue turns the (I, Q) chroma plane about the grey axis Y.
_YIQ = (
    (0.299, 0.587, 0.114),
    (0.596, -0.274, -0.322),
    (0.211, -0.523, 0.312),
)
# Ops that move pixels by whole pixels only: sampled with "nearest", exactly.
_WHOLE_PIXEL = frozenset({"hflip", "vflip", "crop", "translate"})


def batch_seed(seed: int, epoch: int, step: int) -> int:
    """A 63-bit seed for one batch: distinct (seed, epoch, step) give unrelated streams."""
    digest = hashlib.blake2b(struct.pack("<qqq", seed, epoch, step), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Augmenter:
    """aug(x, epoch, step) → the augmented batch (x is not modified).

    x is a batch of standardized images (N, C, H, W) or of their flattened rows (N, C·H·W);
    mean and std are the statistics it was standardized with, shaped (C, 1, 1) per channel
    or (C·H·W,) per feature. aug(x, epoch, step, mask=m) also transforms a segmentation mask
    m (N, H, W) of class indices with the same geometric ops (nearest neighbour, outside the
    image → mask_fill) and returns (x, m); photometric ops and cutout leave masks alone.
    """

    def __init__(
        self,
        ops: Sequence[AugmentationOp],
        *,
        image_shape: tuple[int, int, int],
        mean: np.ndarray,
        std: np.ndarray,
        seed: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        mask_fill: int = 0,
    ) -> None:
        self.ops = list(ops)
        self.image_shape = image_shape
        self.seed = seed
        self.mask_fill = mask_fill
        self.device = torch.device(device)
        self.mean = torch.as_tensor(np.asarray(mean), dtype=dtype, device=self.device)
        self.std = torch.as_tensor(np.asarray(std), dtype=dtype, device=self.device)
        self.inv_std = 1.0 / self.std
        _, height, width = image_shape
        self.rows = torch.arange(height, device=self.device)
        self.cols = torch.arange(width, device=self.device)
        # The output pixels' centres in grid_sample's coordinates (−1 and 1 at the image's outer
        # edges, align_corners=False), as rows (u, v, 1) of a (3, H·W) matrix.
        v, u = torch.meshgrid(
            (2 * self.rows.to(dtype) + 1) / height - 1,
            (2 * self.cols.to(dtype) + 1) / width - 1,
            indexing="ij",
        )
        self.base_grid = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u).reshape(-1)])
        # Runs of consecutive geometric ops are applied as one affine map.
        self.stages: list[list[AugmentationOp]] = []
        for op in self.ops:
            if op.p == 0:
                continue
            geometric = op.op in GEOMETRIC_OPS
            if geometric and self.stages and self.stages[-1][0].op in GEOMETRIC_OPS:
                self.stages[-1].append(op)
            else:
                self.stages.append([op])
        self.generator = torch.Generator(self.device)

    @overload
    def __call__(
        self, x: torch.Tensor, epoch: int, step: int, mask: None = None
    ) -> torch.Tensor: ...
    @overload
    def __call__(
        self, x: torch.Tensor, epoch: int, step: int, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def __call__(
        self, x: torch.Tensor, epoch: int, step: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...
    def __call__(
        self, x: torch.Tensor, epoch: int, step: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.generator.manual_seed(batch_seed(self.seed, epoch, step))
        shape = x.shape
        raw = torch.addcmul(self.mean, x, self.std)  # x·std + mean: the loaded intensities
        images = raw.view(len(x), *self.image_shape)
        for stage in self.stages:
            kind = stage[0].op
            if kind in GEOMETRIC_OPS:
                images, mask = self._geometric(images, stage, mask)
            elif isinstance(stage[0], Cutout):
                images = self._cutout(images, stage[0])
            else:
                assert isinstance(stage[0], ColorJitter)
                images = self._jitter(images, stage[0])
        out = ((images.reshape(shape) - self.mean) * self.inv_std).contiguous()
        return out if mask is None else (out, mask)

    # ------------------------------------------------------------------ random draws

    def _uniform(self, n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=like.dtype)
        return u.mul_(high - low).add_(low)

    def _applied(self, n: int, p: float) -> torch.Tensor | None:
        """Which images an op with probability p applies to; None when it applies to all."""
        if p >= 1.0:
            return None
        return torch.rand(n, generator=self.generator, device=self.device) < p

    def _whole_pixels(self, n: int, limit: int, like: torch.Tensor) -> torch.Tensor:
        """Integers uniform in [−limit, limit], as float."""
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=like.dtype)
        return u.mul_(2 * limit + 1).floor_().sub_(limit)

    # ------------------------------------------------------------------ geometric

    def _geometric(
        self, images: torch.Tensor, ops: list[AugmentationOp], mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, _, height, width = images.shape
        if all(op.op in ("hflip", "vflip") for op in ops):
            for op in ops:  # flips alone: no resampling needed
                applied = self._applied(n, op.p)
                dim = -1 if op.op == "hflip" else -2
                images = _where(applied, images.flip(dim), images)
                if mask is not None:
                    mask = _where(applied, mask.flip(dim), mask)
            return images, mask

        # The map from output to input pixel positions, x_in = A x_out + b, in pixels from the
        # image centre (x right, y down). An image transformed by T1, then T2, … then Tk reads
        # its output pixel at T1⁻¹ T2⁻¹ … Tk⁻¹ x_out: each op multiplies its inverse on the right.
        a = images.new_zeros(n, 2, 2)
        a[:, 0, 0] = a[:, 1, 1] = 1.0
        b = images.new_zeros(n, 2)
        for op in ops:
            applied = self._applied(n, op.p)
            if op.op in ("hflip", "vflip"):
                sign = torch.full((n,), -1.0, dtype=a.dtype, device=a.device)
                if applied is not None:
                    sign = torch.where(applied, sign, 1.0)
                a[:, :, 0 if op.op == "hflip" else 1] *= sign[:, None]
                continue
            if op.op == "rotate":
                angle = self._uniform(n, -op.degrees, op.degrees, a).mul_(math.pi / 180)
                if applied is not None:
                    angle = torch.where(applied, angle, 0.0)
                cos, sin = angle.cos(), angle.sin()
                # Positive angles turn the image counter-clockwise on screen (y points down),
                # as in torchvision; the output reads the input at the opposite turn.
                inverse = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
                a = _matmul(a, inverse)
            elif op.op == "scale":
                factor = self._uniform(n, op.min, op.max, a)
                if applied is not None:
                    factor = torch.where(applied, factor, 1.0)
                a = a / factor[:, None, None]
            else:  # crop (a shift of up to `padding`), translate (up to fraction × size)
                if isinstance(op, Crop):
                    limit_x = limit_y = op.padding
                else:
                    assert isinstance(op, Translate)
                    limit_x = math.floor(op.fraction * width)
                    limit_y = math.floor(op.fraction * height)
                shift = torch.stack(
                    [self._whole_pixels(n, limit_x, a), self._whole_pixels(n, limit_y, a)], 1
                )
                if applied is not None:
                    shift = torch.where(applied[:, None], shift, 0.0)
                b = b - (a * shift[:, None, :]).sum(2)
        # To grid_sample's coordinates: −1 and 1 at the outer edges of the image
        # (align_corners=False), i.e. pixels divided by half the width (height).
        half = a.new_tensor([width / 2, height / 2])
        theta = torch.cat([a * (half[None, :] / half[:, None]), (b / half)[:, :, None]], 2)
        # F.affine_grid computes this as N small matrix products, which on a CPU costs 10-100×
        # more than this one (2N × 3) @ (3 × H·W) product.
        grid = (theta.reshape(2 * n, 3) @ self.base_grid.to(theta.dtype)).view(n, 2, height, width)
        grid = grid.permute(0, 2, 3, 1)
        exact = all(op.op in _WHOLE_PIXEL for op in ops)
        # Outside the image grid_sample reads 0: black, as the loaded images are padded.
        images = F.grid_sample(
            images, grid, mode="nearest" if exact else "bilinear", align_corners=False
        )
        if mask is not None:
            shifted = (mask - self.mask_fill).to(images.dtype).unsqueeze(1)
            moved = F.grid_sample(shifted, grid, mode="nearest", align_corners=False)
            mask = moved.squeeze(1).round().to(mask.dtype) + self.mask_fill
        return images, mask

    # ------------------------------------------------------------------ cutout

    def _cutout(self, images: torch.Tensor, op: Cutout) -> torch.Tensor:
        n, _, height, width = images.shape
        centre_y = (torch.rand(n, generator=self.generator, device=self.device) * height).long()
        centre_x = (torch.rand(n, generator=self.generator, device=self.device) * width).long()
        top, left = centre_y - op.size // 2, centre_x - op.size // 2
        in_rows = (self.rows >= top[:, None]) & (self.rows < top[:, None] + op.size)
        in_cols = (self.cols >= left[:, None]) & (self.cols < left[:, None] + op.size)
        hole = in_rows[:, :, None] & in_cols[:, None, :]
        applied = self._applied(n, op.p)
        if applied is not None:
            hole &= applied[:, None, None]
        # The mean image: 0 once standardized again.
        mean = self.mean.view(-1, *self.image_shape[1:]) if self.mean.dim() == 1 else self.mean
        return torch.where(hole[:, None], mean, images)

    # ------------------------------------------------------------------ colour

    def _factor(
        self, n: int, amount: float, applied: torch.Tensor | None, like: torch.Tensor
    ) -> torch.Tensor:
        factor = self._uniform(n, max(0.0, 1.0 - amount), 1.0 + amount, like)
        if applied is not None:
            factor = torch.where(applied, factor, 1.0)
        return factor.view(n, 1, 1, 1)

    def _jitter(self, images: torch.Tensor, op: ColorJitter) -> torch.Tensor:
        n, channels = images.shape[:2]
        applied = self._applied(n, op.p)
        grey = images.new_tensor(_GREY).view(1, 3, 1, 1) if channels == 3 else None

        def luma(x: torch.Tensor) -> torch.Tensor:
            return (x * grey).sum(1, keepdim=True) if grey is not None else x

        if op.brightness:
            images = images * self._factor(n, op.brightness, applied, images)
        if op.contrast:
            factor = self._factor(n, op.contrast, applied, images)
            mean = luma(images).mean((1, 2, 3), keepdim=True)
            images = torch.lerp(mean, images, factor)  # mean + f·(x − mean)
        if op.saturation:
            factor = self._factor(n, op.saturation, applied, images)
            images = torch.lerp(luma(images), images, factor)
        if op.hue:
            turn = self._uniform(n, -op.hue, op.hue, images) * (2 * math.pi)
            if applied is not None:
                turn = torch.where(applied, turn, 0.0)
            yiq = images.new_tensor(_YIQ)
            cos, sin = turn.cos(), turn.sin()
            ones, zeros = torch.ones_like(cos), torch.zeros_like(cos)
            rotation = torch.stack([ones, zeros, zeros, zeros, cos, -sin, zeros, sin, cos], 1)
            matrix = torch.linalg.inv(yiq) @ rotation.view(n, 3, 3) @ yiq
            images = torch.einsum("nij,njhw->nihw", matrix, images)
        return images


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched 2 × 2 products, elementwise: torch's bmm is slow for many tiny matrices on CPU."""
    return (a[:, :, :, None] * b[:, None, :, :]).sum(2)


def _where(applied: torch.Tensor | None, changed: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    if applied is None:
        return changed
    return torch.where(applied.view(-1, *([1] * (changed.dim() - 1))), changed, same)
