"""Spatial transforms of clips (torchvision.transforms.v2), paper §5 "network training".

Frames come from the shards as uint8 (T, H, W, 3) at ``prepare.short_side``; v2
wants videos as (..., C, H, W), so clips travel as (T, 3, H, W) and leave as float
(3, T, S, S), normalised with the ImageNet mean and std.

- training: resize the short side to a random size in ``train.scale_jitter``, random
  ``train.crop_size`` crop, horizontal flip if ``train.flip``;
- evaluation: resize the short side to ``train.eval_short_side``, then the centre
  ``train.crop_size`` crop (planning's cheap view) or, testing, three
  ``evaluate.crop_size`` crops along the long side (left/centre/right, or
  top/centre/bottom for portrait videos: the three-crop testing of §5.2; the paper's
  crops are 256², the whole short side).

Randomness comes from torch's global generator, which the dataset seeds per sample.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from opplan.config import TrainParams

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_video(frames: np.ndarray) -> tv_tensors.Video:
    """uint8 (T, H, W, 3) numpy -> uint8 video tensor (T, 3, H, W)."""
    return tv_tensors.Video(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2))


class _Contiguous(v2.Transform):
    """Copy to contiguous (T, 3, H, W): frames arrive channels-last from the shards, which
    suits uint8 resizing but makes ``Normalize`` several times slower."""

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        out = inpt.contiguous()
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def _normalise() -> list[v2.Transform]:
    return [_Contiguous(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]


class ScaleJitterCrop(v2.Transform):
    """Resize the short side to a random size in ``scale`` (inclusive), then a random
    ``size`` x ``size`` crop; done as one ``resized_crop`` of the matching square of the
    input, so only the crop is resampled (same views, several times cheaper)."""

    def __init__(self, scale: tuple[int, int], size: int) -> None:
        super().__init__()
        self.scale, self.size = scale, size

    def make_params(self, flat_inputs: list) -> dict[str, int]:
        height, width = v2.query_size(flat_inputs)
        short = int(torch.randint(self.scale[0], self.scale[1] + 1, ()))
        side = min(round(self.size * min(height, width) / short), height, width)  # the crop, in input pixels
        top = int(torch.randint(0, height - side + 1, ()))
        left = int(torch.randint(0, width - side + 1, ()))
        return {"top": top, "left": left, "side": side}

    def transform(self, inpt: torch.Tensor, params: dict[str, int]) -> torch.Tensor:
        side = params["side"]
        return F.resized_crop(inpt, params["top"], params["left"], side, side, [self.size, self.size], antialias=True)


def train_transform(train: TrainParams) -> v2.Compose:
    """(T, 3, H, W) uint8 -> (T, 3, S, S) float: scale jitter + random crop, flip, normalise."""
    steps: list[v2.Transform] = [ScaleJitterCrop(train.scale_jitter, train.crop_size)]
    if train.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _normalise())


def eval_transform(train: TrainParams) -> v2.Compose:
    """(T, 3, H, W) uint8 -> (T, 3, S, S) float: short side to ``eval_short_side``, centre crop."""
    return v2.Compose([v2.Resize(train.eval_short_side, antialias=True), v2.CenterCrop(train.crop_size)]
                      + _normalise())


class MultiCrop:
    """(T, 3, H, W) uint8 -> (crops, T, 3, S, S) float: short side to ``eval_short_side``,
    then 1 (centre) or 3 (both ends and the centre of the long side) S x S crops, with
    S = ``size`` (None: ``train.crop_size``)."""

    def __init__(self, train: TrainParams, crops: int, size: int | None = None) -> None:
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 or 3, got {crops}")
        if size is not None and size > train.eval_short_side:
            raise ValueError(f"test crop size {size} exceeds eval_short_side {train.eval_short_side}")
        self.size, self.crops = size or train.crop_size, crops
        self.resize = v2.Resize(train.eval_short_side, antialias=True)
        self.normalise = v2.Compose(_normalise())

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        video = self.resize(video)
        height, width = video.shape[-2:]
        s = self.size
        top, left = (height - s) // 2, (width - s) // 2
        if self.crops == 1:
            boxes = [(top, left)]
        elif width >= height:
            boxes = [(top, 0), (top, left), (top, width - s)]
        else:
            boxes = [(0, left), (top, left), (height - s, left)]
        return torch.stack([self.normalise(F.crop(video, t, l, s, s)) for t, l in boxes])
