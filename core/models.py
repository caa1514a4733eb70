"""The models a job spec can describe: an MLP and a small CNN for 8x8 images."""

from __future__ import annotations

import torch
from torch import nn

from core.spec import DatasetInfo, JobSpec, ModelSpec

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
        blocks: list[nn.Module] = []
        width = in_features
        for h in spec.hidden:
            blocks.append(nn.Linear(width, h))
            if spec.norm == "batch":
                blocks.append(nn.BatchNorm1d(h))
            elif spec.norm == "layer":
                blocks.append(nn.LayerNorm(h))
            blocks.append(_ACTIVATIONS[spec.activation]())
            if spec.dropout > 0:
                blocks.append(nn.Dropout(spec.dropout))
            width = h
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
        c_in, size, _ = image_shape
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
            c_in, size = c, size // 2
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in * size * size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def build_model(spec: JobSpec) -> nn.Module:
    """The spec's model, initialized with the current torch RNG (seed it first)."""
    info: DatasetInfo = spec.dataset.info()
    model: nn.Module
    if spec.model.arch == "cnn":
        assert info.image_shape is not None  # the spec refuses cnn on tabular data
        model = CNN(info.image_shape, info.output_size, spec.model)
    else:
        model = MLP(info.n_features, info.output_size, spec.model)
    initialize(model, spec.model)
    return model


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
    nonlinearity = "leaky_relu" if spec.activation == "leaky_relu" else "relu"
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
