"""Notes 4.8.4 in numbers: L1/L2 terms vs weight decay, dropout, batch and layer norm."""

import numpy as np
import pytest
import torch
from torch import nn

from core import fit
from core.models import CNN, MLP
from core.optim import build_optimizer
from core.spec import JobSpec, ModelSpec, warnings
from core.train import Trainer
from tests.core.builders import make_spec, spec_dict


def trained(**patch) -> Trainer:
    trainer = Trainer(make_spec(**patch), dtype=torch.float64).setup()
    trainer.train()
    return trainer


def flat_params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])


# --------------------------------------------------------------------------- L1, L2, decay


def test_l1_drives_weights_to_zero_l2_shrinks_them_all() -> None:
    # Softmax regression on digits: 640 weights, plain SGD, 20 epochs.
    base = dict(
        dataset={"name": "digits"},
        model={"hidden": []},
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.0},
        training={"epochs": 20, "batch_size": 64},
    )
    weights = {
        name: trained(**base, regularization=reg).model.head.weight.detach().abs()
        for name, reg in (("none", {}), ("l1", {"l1": 0.01}), ("l2", {"l2": 0.05}))
    }
    near_zero = {k: int((w < 1e-3).sum()) for k, w in weights.items()}
    # L1: hundreds of weights end within 1e-3 of zero (a subgradient step of η·l1 = 5e-4
    # keeps them hopping across it); without it, or with L2, only a handful.
    assert near_zero["l1"] > 200 and near_zero["none"] < 10 and near_zero["l2"] < 20
    # L2 shrinks every weight: the largest too, where L1 leaves the large ones large.
    assert weights["l2"].norm() < 0.75 * weights["none"].norm()
    assert weights["l2"].max() < 0.8 * weights["none"].max()
    assert weights["l1"].max() > 0.95 * weights["none"].max()
    # L2 keeps the weights spread out: its median weight is ~60% of none's, L1's is ~0.
    assert weights["l2"].median() > 0.4 * weights["none"].median()
    assert weights["l1"].median() < 0.05 * weights["none"].median()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_l2_term_and_weight_decay_take_the_same_steps(momentum: float) -> None:
    def run(reg: dict) -> Trainer:
        return trained(
            optimizer={"name": "sgd", "lr": 0.1, "momentum": momentum}, regularization=reg
        )

    l2, decay = run({"l2": 0.1}), run({"weight_decay": 0.1})
    assert torch.allclose(flat_params(l2), flat_params(decay), atol=1e-10)


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop"])
def test_adaptive_optimizers_decay_outside_the_adaptive_scaling(name: str) -> None:
    # One step from the same weights and gradient g: the l2 term's gradient λw joins g inside
    # Adam's normalization; weight decay shrinks w by η·λ·w outside it (notes 4.8.4).
    lr, lam = 0.01, 0.1
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=False).double()
    w0 = model.weight.detach().clone()
    g = torch.randn_like(w0)

    def step(regularization: dict, extra_grad: torch.Tensor) -> torch.Tensor:
        model.weight.data.copy_(w0)
        spec = JobSpec.model_validate(
            spec_dict(optimizer={"name": name, "lr": lr}, regularization=regularization)
        )
        optimizer = build_optimizer(spec, model)
        model.weight.grad = g + extra_grad
        optimizer.step()
        return model.weight.detach().clone()

    with_l2 = step({}, lam * w0)  # what the loss term (l2/2)·Σw² adds to the gradient
    with_decay = step({"weight_decay": lam}, torch.zeros_like(w0))
    plain = step({}, torch.zeros_like(w0))
    # Decoupled: exactly the plain step, with the weights first shrunk by (1 − ηλ).
    assert torch.allclose(with_decay, plain - lr * lam * w0, atol=1e-15)
    assert not torch.allclose(with_l2, with_decay, atol=1e-4)
    if name != "rmsprop":  # Adam's first step is η·sign(gradient), whatever its size
        assert torch.allclose(with_l2, w0 - lr * torch.sign(g + lam * w0), atol=1e-9)
        assert torch.allclose(plain, w0 - lr * torch.sign(g), atol=1e-9)


def test_adam_l2_term_and_weight_decay_end_apart_after_training() -> None:
    def run(reg: dict) -> Trainer:
        return trained(optimizer={"name": "adam", "lr": 0.01}, regularization=reg)

    l2, decay = run({"l2": 0.1}), run({"weight_decay": 0.1})
    gap = float((flat_params(l2) - flat_params(decay)).abs().max())
    assert gap > 1e-3, gap
    assert l2.history[-1].metrics["penalty"] > 0 and "penalty" not in decay.history[-1].metrics


# --------------------------------------------------------------------------- dropout


def test_inverted_dropout_in_training_and_evaluation() -> None:
    torch.manual_seed(0)
    p = 0.3
    model = MLP(1000, 2, ModelSpec(hidden=[1000], dropout=p))
    drop = model.body[-1]
    assert isinstance(drop, nn.Dropout) and drop.p == p
    ones = torch.ones(200, 1000)
    out = drop.train()(ones)
    dropped = float((out == 0).float().mean())
    assert abs(dropped - p) < 0.005  # a unit is dropped with probability p
    kept = out[out != 0]
    assert torch.all(kept == kept[0]) and float(kept[0]) == pytest.approx(1 / (1 - p), rel=1e-6)
    assert float(out.mean()) == pytest.approx(1.0, abs=0.01)  # the expectation is unchanged
    assert torch.equal(drop.eval()(ones), ones)  # inference: no drop, no scaling

    # The whole model: in evaluation it is the same network without dropout, exactly.
    plain = MLP(1000, 2, ModelSpec(hidden=[1000], dropout=0.0))
    plain.load_state_dict(model.state_dict())
    x = torch.randn(50, 1000)
    model.eval()
    assert torch.equal(model(x), plain.eval()(x))
    model.train()
    a, b = model(x), model(x)
    assert not torch.equal(a, b) and not torch.equal(a, plain(x))


def test_evaluation_never_drops() -> None:
    spec = make_spec(model={"hidden": [32], "dropout": 0.5}, training={"epochs": 2})
    trainer = Trainer(spec).setup()
    trainer.train()
    assert trainer.evaluate("val") == trainer.evaluate("val")  # deterministic
    assert trainer.model.training  # evaluation restored the training mode


def test_channel_dropout_drops_whole_feature_maps_with_inverted_scaling() -> None:
    torch.manual_seed(0)
    model = CNN((1, 8, 8), 10, ModelSpec(arch="cnn", channels=[64], dropout=0.25))
    drop = next(m for m in model.modules() if isinstance(m, nn.Dropout2d))
    out = drop.train()(torch.ones(100, 64, 8, 8)).flatten(2)
    whole = (out == 0).all(-1) | (out == out[..., :1]).all(-1)
    assert bool(whole.all())  # a map is dropped or kept as a whole
    assert abs(float((out[..., 0] == 0).float().mean()) - 0.25) < 0.02
    assert float(out[out != 0][0]) == pytest.approx(1 / 0.75)


# --------------------------------------------------------------------------- normalization


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_evaluation() -> None:
    torch.manual_seed(0)
    model = MLP(8, 2, ModelSpec(hidden=[16], norm="batch")).double()
    bn = model.body[1]
    assert isinstance(bn, nn.BatchNorm1d)
    # Notes 4.10: a layer with output 8 x 16 has γ and β of 16 each, learned.
    assert bn.weight.shape == bn.bias.shape == (16,) and bn.weight.requires_grad
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 16))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 16))
    gamma, beta = bn.weight.detach().numpy(), bn.bias.detach().numpy()
    x = torch.randn(8, 16, dtype=torch.float64) * 3 + 2  # the linear layer's output

    bn.train()
    y = bn(x)
    xn = x.numpy()
    mu, var = xn.mean(0), xn.var(0)  # the batch's, biased
    x_hat = (xn - mu) / np.sqrt(var + bn.eps)
    np.testing.assert_allclose(y.detach().numpy(), gamma * x_hat + beta, rtol=1e-10)
    # Running averages, μ_run ← α μ_run + (1 − α) μ_batch with α = 1 − momentum = 0.9
    # (torch keeps the unbiased variance there).
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.9 * 0 + 0.1 * mu, rtol=1e-10)
    np.testing.assert_allclose(
        bn.running_var.numpy(), 0.9 * 1 + 0.1 * xn.var(0, ddof=1), rtol=1e-10
    )

    # dγ = Σ_n dout·x̂ and dβ = Σ_n dout (notes 4.10), against autograd.
    dout = torch.randn(8, 16, dtype=torch.float64)
    y.backward(dout)
    np.testing.assert_allclose(bn.weight.grad.numpy(), (dout.numpy() * x_hat).sum(0), rtol=1e-10)
    np.testing.assert_allclose(bn.bias.grad.numpy(), dout.numpy().sum(0), rtol=1e-10)

    bn.eval()
    run_mu, run_var = bn.running_mean.numpy(), bn.running_var.numpy()
    expected = gamma * (xn - run_mu) / np.sqrt(run_var + bn.eps) + beta
    with torch.no_grad():
        np.testing.assert_allclose(bn(x).numpy(), expected, rtol=1e-10)
        # In evaluation a sample's output does not depend on the rest of its batch.
        assert torch.equal(bn(x[:1]), bn(x)[:1])
        assert not torch.allclose(bn.train()(x[:4])[:1], bn.train()(x[:6])[:1])


def test_batch_norm_in_a_cnn_normalizes_each_channel_over_batch_and_pixels() -> None:
    model = CNN((1, 8, 8), 10, ModelSpec(arch="cnn", channels=[4], norm="batch")).double()
    conv, bn = model.body[0], model.body[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.weight.shape == (4,)
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        y = bn.train()(conv(x))
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(
        y.var((0, 2, 3), unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-4
    )


def test_layer_norm_normalizes_each_sample_the_same_in_training_and_evaluation() -> None:
    model = MLP(8, 2, ModelSpec(hidden=[16], norm="layer")).double()
    ln = model.body[1]
    assert isinstance(ln, nn.LayerNorm)
    x = torch.randn(5, 16, dtype=torch.float64) * 4 + 1
    with torch.no_grad():
        y = ln.train()(x)
        assert torch.allclose(y.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-12)
        assert torch.equal(ln.eval()(x), y) and torch.equal(ln(x[:1]), y[:1])


def test_trained_batch_norm_model_evaluates_with_running_statistics() -> None:
    trainer = trained(model={"hidden": [16], "norm": "batch"}, training={"epochs": 3})
    bn = trainer.model.body[1]
    assert float(bn.running_mean.abs().sum()) > 0 and int(bn.num_batches_tracked) == 3 * 8
    before = bn.running_mean.clone()
    trainer.evaluate("val")
    assert torch.equal(bn.running_mean, before)  # evaluation does not update them


def test_batch_norm_small_batches_warn_and_a_batch_of_one_is_refused() -> None:
    small = make_spec(model={"norm": "batch"}, training={"batch_size": 8, "epochs": 1})
    [warning] = warnings(small)
    assert "batch norm" in warning and "8 (< 16)" in warning
    assert warnings(make_spec(model={"norm": "batch"}, training={"batch_size": 16})) == []
    assert warnings(make_spec(model={"norm": "layer"}, training={"batch_size": 2})) == []
    result = fit(
        make_spec(
            dataset={"name": "wine"},
            model={"norm": "batch"},
            training={"batch_size": 8, "epochs": 1},
        )
    )
    assert result.warnings == [warning]  # wine: no duplicate rows to warn about
    assert result.to_dict()["warnings"] == result.warnings
    with pytest.raises(Exception, match="batch_size > 1"):
        make_spec(model={"norm": "batch"}, training={"batch_size": 1})
