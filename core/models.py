"""The models a job spec can describe.

Every model is input → body → head (see core.spec's model layout): an MLP or a small CNN
for classification and regression; an autoencoder (its encoder the body, a mirrored
decoder the head) for reconstruction; a CNN encoder and a small convolutional decoder for
segmentation; and, with a backbone, a torchvision model or an earlier job's encoder as the
body under a new head. The body is what a later job can take as its backbone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import TrainingError
from core.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetInfo,
    JobBackbone,
    JobSpec,
    ModelSpec,
    TorchvisionBackbone,
    decoder_widths,
)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Module):
    """Hidden blocks of linear → norm → activation → dropout, then a linear output layer.

    Dropout comes last in a block so it drops whole neurons after they are computed.
    """

    def __init__(self, in_features: int, out_features: int, spec: ModelSpec) -> None:
        super().__init__()
        blocks, width = mlp_blocks(in_features, spec.hidden, spec)
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


class CNN(nn.Module):
    """Blocks of 3x3 conv → norm → activation → channel dropout → 2x2 max pool, then a linear head.

    Dropout2d drops whole channels: neighbouring pixels of one feature map are so correlated
    that dropping single pixels barely regularizes. Layer norm on feature maps is GroupNorm with
    one group (normalize over C, H, W per sample, one scale and shift per channel).
    """

    def __init__(
        self, image_shape: tuple[int, int, int], out_features: int, spec: ModelSpec
    ) -> None:
        super().__init__()
        c_in, height, width = image_shape
        blocks = cnn_blocks(c_in, spec)
        blocks_count = len(spec.channels)
        self.body = nn.Sequential(*blocks)
        size = (height >> blocks_count) * (width >> blocks_count)
        self.head = nn.Linear(spec.channels[-1] * size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def mlp_blocks(width: int, widths: list[int], spec: ModelSpec) -> tuple[list[nn.Module], int]:
    """Blocks of linear → norm → activation → dropout; the last width."""
    blocks: list[nn.Module] = []
    for h in widths:
        blocks.append(nn.Linear(width, h))
        if spec.norm == "batch":
            blocks.append(nn.BatchNorm1d(h))
        elif spec.norm == "layer":
            blocks.append(nn.LayerNorm(h))
        blocks.append(_ACTIVATIONS[spec.activation]())
        if spec.dropout > 0:
            blocks.append(nn.Dropout(spec.dropout))
        width = h
    return blocks, width


def cnn_blocks(c_in: int, spec: ModelSpec) -> list[nn.Module]:
    """Blocks of 3x3 conv → norm → activation → channel dropout → 2x2 max pool."""
    blocks: list[nn.Module] = []
    for c in spec.channels:
        blocks.append(nn.Conv2d(c_in, c, kernel_size=3, padding=1))
        if spec.norm == "batch":
            blocks.append(nn.BatchNorm2d(c))
        elif spec.norm == "layer":
            blocks.append(nn.GroupNorm(1, c))
        blocks.append(_ACTIVATIONS[spec.activation]())
        if spec.dropout > 0:
            blocks.append(nn.Dropout2d(spec.dropout))
        blocks.append(nn.MaxPool2d(2))
        c_in = c
    return blocks


class ConvDecoder(nn.Module):
    """Feature map → per-pixel outputs at the input's size: per width, upsample x2 (nearest)
    → 3x3 conv → activation; then a 1x1 conv to the outputs, resized (bilinear) to the
    input's height and width where the upsampling did not land on them exactly."""

    def __init__(self, c_in: int, widths: list[int], c_out: int, activation: str) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for w in widths:
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c_in, w, kernel_size=3, padding=1),
                _ACTIVATIONS[activation](),
            ]
            c_in = w
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = self.out(self.blocks(features))
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


class Preprocess(nn.Module):
    """What a pretrained torchvision model expects of images in [0, 1]: 3 channels (grey
    repeated), input_size x input_size, normalized with ImageNet's mean and std. No
    parameters, and its buffers are not saved: the checkpoint is the model's weights."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) != size:
            # Antialiased when shrinking, as torchvision's Resize does on tensors.
            shrink = x.shape[-1] > self.input_size or x.shape[-2] > self.input_size
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        return (x - self.mean) / self.std


class Net(nn.Module):
    """input → [preprocess] → body → head.

    flatten: the body takes flat rows (an MLP body); dense: the head gives per-pixel outputs
    at the input's size (a ConvDecoder), otherwise it takes the body's features.
    """

    def __init__(
        self,
        body: nn.Module,
        head: nn.Module,
        *,
        prep: nn.Module | None = None,
        flatten: bool = False,
        dense: bool = False,
    ) -> None:
        super().__init__()
        self.prep = prep
        self.body = body
        self.head = head
        self.flatten, self.dense = flatten, dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        if self.flatten:
            x = x.flatten(1)
        if self.prep is not None:
            x = self.prep(x)
        features = self.body(x)
        if self.dense:
            return self.head(features, size)
        return self.head(features)


def torchvision_body(arch: str, task: str) -> nn.Module:
    """A torchvision model (random weights) cut for a task: before the classifier's last
    linear layer (flat features), or for segmentation its convolutional part (a feature
    map). Its state-dict names are torchvision's, so torchvision weights load into it."""
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    if task == "segmentation":
        if arch.startswith("resnet"):
            names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
            return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))
        return nn.Sequential(OrderedDict(features=model.features))
    if arch.startswith("resnet"):
        model.fc = nn.Identity()
    else:
        model.classifier[-1] = nn.Identity()
    return model


def body_of(
    model: ModelSpec,
    backbone: TorchvisionBackbone | None,
    info: DatasetInfo,
    task: str,
) -> tuple[nn.Module, nn.Module | None, bool]:
    """(body, preprocess, takes flat rows) of a model spec or torchvision backbone."""
    if backbone is not None:
        return torchvision_body(backbone.arch, task), Preprocess(backbone.input_size), False
    if model.arch == "mlp":
        blocks, _ = mlp_blocks(info.n_features, model.hidden, model)
        return nn.Sequential(*blocks), None, True
    assert info.image_shape is not None
    return nn.Sequential(*cnn_blocks(info.image_shape[0], model)), None, False


def build_model(spec: JobSpec, info: DatasetInfo | None = None) -> nn.Module:
    """The spec's model, initialized with the current torch RNG (seed it first).

    info: the dataset's (an upload's is known once it is loaded). A backbone's weights are
    not loaded here (see core.backbones.load_backbone): the body starts as torchvision
    initializes it, or, from an earlier job, as the spec's init would.
    """
    info = info or spec.dataset.info()
    task = spec.task or info.task
    out = info.outputs_for(task)
    if spec.backbone is None and task in ("classification", "regression"):
        model: nn.Module
        if spec.model.arch == "cnn":
            assert info.image_shape is not None  # the spec refuses cnn on tabular data
            model = CNN(info.image_shape, out, spec.model)
        else:
            model = MLP(info.n_features, out, spec.model)
        initialize(model, spec.model)
        return model
    if spec.backbone is None:
        body, prep, flat = body_of(spec.model, None, info, task)
        head: nn.Module
        if spec.model.arch == "mlp":  # reconstruction: decode back to the input's features
            blocks, width = mlp_blocks(
                spec.model.hidden[-1] if spec.model.hidden else info.n_features,
                list(reversed(spec.model.hidden[:-1])),
                spec.model,
            )
            head = nn.Sequential(*blocks, nn.Linear(width, out))
            model = Net(body, head, flatten=True)
        else:
            assert info.image_shape is not None
            c_out = info.image_shape[0] if task == "reconstruction" else out
            widths = decoder_widths(spec.model)
            head = ConvDecoder(spec.model.channels[-1], widths, c_out, spec.model.activation)
            model = Net(body, head, dense=True)
        initialize(model, spec.model)
        return model
    # With a backbone: its body, and a head of this spec's model on its features.
    if isinstance(spec.backbone, JobBackbone):
        source = spec.source
        if source is None:
            raise TrainingError(
                f"the spec of backbone job {spec.backbone.from_job!r} is needed to build "
                "its encoder"
            )
        tv = source.backbone if isinstance(source.backbone, TorchvisionBackbone) else None
        body, prep, flat = body_of(source.model, tv, info, task)
        if tv is None:
            initialize(body, source.model)
    else:
        body, prep, flat = body_of(spec.model, spec.backbone, info, task)
    shape = spec.body_shape(info)
    if task == "segmentation":
        widths = decoder_widths(spec.model)
        head = ConvDecoder(shape.channels, widths, out, spec.model.activation)
    else:
        head = MLP(shape.flat, out, spec.model)
    initialize(head, spec.model)
    return Net(body, head, prep=prep, flatten=flat, dense=task == "segmentation")


def initialize(model: nn.Module, spec: ModelSpec) -> None:
    """Apply spec.init to every linear and conv layer; biases start at zero.

    Xavier keeps the variance of activations constant for tanh/sigmoid (Var w = 2/(n_in+n_out));
    Kaiming doubles it for ReLU, which zeroes half its inputs (Var w = 2/n_in). Normal draws
    w ~ N(0, init_std²) whatever the layer's size: a tiny std shrinks activations and
    gradients layer after layer (vanishing gradients), a large one blows them up. Constant makes
    every unit of a layer identical, and identical units get identical gradients, so they stay
    identical: the symmetry that random initialization exists to break. Norm layers keep
    their own (γ = 1, β = 0).
    """
    if spec.init == "default":
        return  # PyTorch's own: uniform(±1/√n_in)
    # Kaiming's gain depends on the nonlinearity: leaky_relu has its own, the rest count as relu.
    nonlinearity: Literal["leaky_relu", "relu"] = (
        "leaky_relu" if spec.activation == "leaky_relu" else "relu"
    )
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        w = module.weight
        if spec.init == "xavier_normal":
            nn.init.xavier_normal_(w)
        elif spec.init == "xavier_uniform":
            nn.init.xavier_uniform_(w)
        elif spec.init == "kaiming_normal":
            nn.init.kaiming_normal_(
                w, a=0.01 if nonlinearity == "leaky_relu" else 0.0, nonlinearity=nonlinearity
            )
        elif spec.init == "kaiming_uniform":
            nn.init.kaiming_uniform_(
                w, a=0.01 if nonlinearity == "leaky_relu" else 0.0, nonlinearity=nonlinearity
            )
        elif spec.init == "normal":
            nn.init.normal_(w, 0.0, spec.init_std)
        elif spec.init == "constant":
            nn.init.constant_(w, spec.init_value)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
