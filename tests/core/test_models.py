import torch
from torch import nn

from core.models import MLP, build_model
from core.spec import JobSpec, ModelSpec
from core.train import Trainer
from tests.core.builders import make_spec


def test_mlp_block_order_is_linear_norm_activation_dropout() -> None:
    model = MLP(4, 3, ModelSpec(hidden=[8], norm="batch", activation="tanh", dropout=0.5))
    kinds = [type(m) for m in model.body]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Tanh, nn.Dropout]


def test_cnn_drops_whole_channels() -> None:
    spec = JobSpec.model_validate(
        {"dataset": {"name": "digits"}, "model": {"arch": "cnn", "channels": [4], "dropout": 0.5}}
    )
    model = build_model(spec)
    assert any(isinstance(m, nn.Dropout2d) for m in model.modules())
    drop = next(m for m in model.modules() if isinstance(m, nn.Dropout2d))
    out = drop.train()(torch.ones(2, 4, 8, 8))
    # Every channel is either all zero or all scaled by 1/(1-p).
    per_channel = out.flatten(2)
    assert torch.all((per_channel == 0).all(-1) | (per_channel == 2).all(-1))


def pre_activation_variances(init: str, depth: int = 12, width: int = 256) -> list[float]:
    torch.manual_seed(0)
    spec = JobSpec.model_validate(
        {
            "dataset": {"name": "regression", "n_features": width},
            "model": {"hidden": [width] * depth, "init": init},
        }
    )
    model = build_model(spec)
    variances: list[float] = []
    for layer in model.body:
        if isinstance(layer, nn.Linear):
            layer.register_forward_hook(lambda m, i, o: variances.append(float(o.var())))
    with torch.no_grad():
        model(torch.randn(2000, width))
    return variances


def test_kaiming_keeps_activation_variance_through_a_deep_relu_mlp() -> None:
    kaiming = pre_activation_variances("kaiming_normal")
    assert 0.5 < kaiming[-1] / kaiming[0] < 2.0, kaiming
    # For contrast: PyTorch's default (Var w = 1/(3 n_in)) shrinks it ~6x per ReLU layer,
    # down to the floor its random biases set.
    default = pre_activation_variances("default")
    assert default[-1] / default[0] < 0.01


def test_xavier_weight_variance() -> None:
    torch.manual_seed(0)
    spec = ModelSpec(hidden=[400], init="xavier_normal")
    model = MLP(600, 10, spec)
    from core.models import initialize

    initialize(model, spec)
    w = model.body[0].weight.detach()
    assert abs(float(w.var()) / (2 / (600 + 400)) - 1) < 0.05
    assert float(model.body[0].bias.detach().abs().max()) == 0.0


def test_constant_init_keeps_hidden_units_identical_after_training() -> None:
    spec = make_spec(
        model={"hidden": [6, 5], "init": "constant", "init_value": 0.1},
        optimizer={"name": "sgd", "lr": 0.1},
        training={"epochs": 5},
    )
    trainer = Trainer(spec, dtype=torch.float64).setup()
    before = trainer.model.body[0].weight.detach().clone()
    trainer.train()
    first, second = trainer.model.body[0], trainer.model.body[2]
    assert not torch.equal(first.weight, before)  # it did train
    # Each unit's incoming weights equal unit 0's; the next layer sees identical inputs.
    assert torch.allclose(first.weight, first.weight[:1].expand_as(first.weight))
    assert torch.allclose(first.bias, first.bias[:1].expand_as(first.bias))
    assert torch.allclose(second.weight, second.weight[:1, :1].expand_as(second.weight))
