"""Optimizers against the course text's formulas, computed by hand in float64.

The problem: L(w, U) = ½wᵀAw − bᵀw + 1.5‖U − C‖², two parameter tensors of different shapes,
with the gradient written out by hand (Aw − b, 3(U − C)) for the reference computations.
"""

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from core.optim import SGD, Adam, Newton, RMSprop, build_optimizer
from core.train import Trainer
from tests.core.builders import make_spec

A = torch.tensor([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]], dtype=torch.float64)
B = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
C = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
START = [
    torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64),
    torch.zeros(2, 2, dtype=torch.float64),
]


def loss(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return 0.5 * w @ A @ w - B @ w + 1.5 * ((u - C) ** 2).sum()


def grad(params: list[torch.Tensor]) -> list[torch.Tensor]:
    w, u = params
    return [A @ w - B, 3.0 * (u - C)]


def run(make: Callable, steps: int, sign: float = 1.0, lrs: list[float] | None = None) -> list:
    """Parameters after each of `steps` optimizer steps on sign·L (lrs: the lr of each step)."""
    params = [p.clone().requires_grad_() for p in START]
    opt = make(params)
    trajectory = []
    for t in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        opt.zero_grad()
        (sign * loss(*params)).backward()
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def assert_trajectories(got: list, want: list, atol: float = 1e-6) -> None:
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for a, b in zip(g, w, strict=True):
            assert torch.allclose(a, b, atol=atol, rtol=0), f"step {step + 1}: {a} != {b}"


def hand_sgd(lrs: list[float], gamma: float, nesterov: bool = False) -> list:
    """m ← γm + η∇L; θ ← θ − m. Nesterov as in the text: the gradient at the look-ahead point
    θ − γm; the optimizer's parameters are that look-ahead point, so it is what we return."""
    theta = [p.clone() for p in START]
    m = [torch.zeros_like(p) for p in START]
    out = []
    for lr in lrs:
        at = [t - gamma * mi for t, mi in zip(theta, m, strict=True)] if nesterov else theta
        g = grad(at)
        m = [gamma * mi + lr * gi for mi, gi in zip(m, g, strict=True)]
        theta = [t - mi for t, mi in zip(theta, m, strict=True)]
        look = [t - gamma * mi for t, mi in zip(theta, m, strict=True)]
        out.append(look if nesterov else theta)
    return out


def test_sgd_momentum_is_the_texts_formula() -> None:
    lrs = [0.1] * 3 + [0.05] * 3  # the lr changes halfway, where the two forms part
    got = run(lambda p: SGD(p, lr=0.1, momentum=0.9), 6, lrs=lrs)
    assert_trajectories(got, hand_sgd(lrs, 0.9))


def test_sgd_equals_torch_sgd_at_constant_lr_only() -> None:
    ours = run(lambda p: SGD(p, lr=0.1, momentum=0.9), 6)
    torchs = run(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 6)
    assert_trajectories(ours, torchs, atol=1e-12)
    lrs = [0.1] * 3 + [0.05] * 3
    ours = run(lambda p: SGD(p, lr=0.1, momentum=0.9), 6, lrs=lrs)
    torchs = run(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 6, lrs=lrs)
    assert_trajectories(ours[:3], torchs[:3], atol=1e-12)
    assert not torch.allclose(ours[3][0], torchs[3][0], atol=1e-4)


def test_nesterov_is_the_look_ahead_gradient() -> None:
    lrs = [0.1] * 3 + [0.03] * 3
    got = run(lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True), 6, lrs=lrs)
    assert_trajectories(got, hand_sgd(lrs, 0.9, nesterov=True))
    torchs = run(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), 3)
    assert_trajectories(got[:3], torchs, atol=1e-12)


def test_plain_sgd_and_maximize() -> None:
    got = run(lambda p: SGD(p, lr=0.1, momentum=0.0), 4)
    assert_trajectories(got, hand_sgd([0.1] * 4, 0.0))
    # maximize: θ ← θ + η∇L, so maximizing −L retraces minimizing L.
    up = run(lambda p: SGD(p, lr=0.1, momentum=0.9, maximize=True), 4, sign=-1.0)
    assert_trajectories(up, hand_sgd([0.1] * 4, 0.9))


def test_rmsprop_is_the_texts_formula() -> None:
    eta, gamma, eps = 0.01, 0.9, 1e-8
    theta, v, want = [p.clone() for p in START], [torch.zeros_like(p) for p in START], []
    for _ in range(5):
        g = grad(theta)
        v = [gamma * vi + (1 - gamma) * gi**2 for vi, gi in zip(v, g, strict=True)]
        theta = [t - eta * gi / torch.sqrt(vi + eps) for t, gi, vi in zip(theta, g, v, strict=True)]
        want.append(theta)
    got = run(lambda p: RMSprop(p, lr=eta, alpha=gamma, eps=eps), 5)
    assert_trajectories(got, want)


def hand_adam(
    steps: int, bias_correction: bool, weight_decay: float = 0.0, eta: float = 0.01
) -> list:
    b1, b2, eps = 0.9, 0.999, 1e-8
    theta = [p.clone() for p in START]
    m = [torch.zeros_like(p) for p in START]
    v = [torch.zeros_like(p) for p in START]
    out = []
    for t in range(1, steps + 1):
        g = grad(theta)
        theta = [th * (1 - eta * weight_decay) for th in theta]  # AdamW's decoupled decay
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        v = [b2 * vi + (1 - b2) * gi**2 for vi, gi in zip(v, g, strict=True)]
        if bias_correction:
            m_hat = [mi / (1 - b1**t) for mi in m]
            v_hat = [vi / (1 - b2**t) for vi in v]
        else:
            m_hat, v_hat = m, v
        theta = [
            th - eta * mh / torch.sqrt(vh + eps)
            for th, mh, vh in zip(theta, m_hat, v_hat, strict=True)
        ]
        out.append(theta)
    return out


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adam_is_the_texts_formula(bias_correction: bool) -> None:
    got = run(lambda p: Adam(p, lr=0.01, bias_correction=bias_correction), 6)
    assert_trajectories(got, hand_adam(6, bias_correction))


def test_adamw_decays_outside_the_adaptive_step() -> None:
    got = run(lambda p: Adam(p, lr=0.01, weight_decay=0.5, decoupled=True), 6)
    assert_trajectories(got, hand_adam(6, True, weight_decay=0.5))
    # Coupled weight decay (Adam) goes through √v̂ and is a different update.
    coupled = run(lambda p: Adam(p, lr=0.01, weight_decay=0.5), 6)
    assert not torch.allclose(coupled[-1][0], got[-1][0], atol=1e-4)


def test_adam_maximize() -> None:
    up = run(lambda p: Adam(p, lr=0.01, maximize=True), 5, sign=-1.0)
    assert_trajectories(up, hand_adam(5, True), atol=1e-12)


def test_adam_bias_correction_differs_first_and_agrees_later() -> None:
    on = run(lambda p: Adam(p, lr=0.01, bias_correction=True), 3000)
    off = run(lambda p: Adam(p, lr=0.01, bias_correction=False), 3000)
    # Step 1: m̂/√v̂ = ±1 with correction; m/√v = (1−β₁)/√(1−β₂) ≈ 3.16 times that without.
    first_on = (on[0][0] - START[0]).abs()
    first_off = (off[0][0] - START[0]).abs()
    assert torch.allclose(first_on, torch.full((3,), 0.01, dtype=torch.float64), rtol=1e-4)
    assert torch.allclose(
        first_off / first_on, torch.tensor(0.1 / 0.001**0.5, dtype=torch.float64), rtol=1e-4
    )
    # Later both settle at the minimizer w* = A⁻¹b, U* = C (within Adam's lr-sized jitter).
    w_star = torch.linalg.solve(A, B)
    for traj in (on, off):
        assert torch.allclose(traj[-1][0], w_star, atol=0.02)
        assert torch.allclose(traj[-1][1], C, atol=0.02)


def test_flat_state_survives_a_state_dict_round_trip() -> None:
    params = [p.clone().requires_grad_() for p in START]
    opt = Adam(params, lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        loss(*params).backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())  # state_dict() holds live tensors, as torch's does
    assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = Adam(resumed_params, lr=0.01)
    resumed.load_state_dict(saved)
    for ps, o in ((params, opt), (resumed_params, resumed)):
        for _ in range(2):
            o.zero_grad()
            loss(*ps).backward()
            o.step()
    for a, b in zip(params, resumed_params, strict=True):
        assert torch.equal(a, b)


def test_newton_solves_a_convex_quadratic_in_one_step() -> None:
    params = [p.clone().requires_grad_() for p in START]
    opt = Newton(params, lr=1.0)

    def closure(flat: torch.Tensor, i: int) -> torch.Tensor:
        return loss(flat[:3], flat[3:].view(2, 2))

    opt.step(closure)
    assert torch.allclose(params[0], torch.linalg.solve(A, B), atol=1e-10)
    assert torch.allclose(params[1], C, atol=1e-10)
    # The gradient at the starting point is left in .grad, as backward() would.
    assert torch.allclose(params[0].grad, grad(START)[0])


def test_newton_damping_and_step_size() -> None:
    params = [p.clone().requires_grad_() for p in START]
    Newton(params, lr=0.5, damping=2.0).step(lambda f, i: loss(f[:3], f[3:].view(2, 2)))
    g = torch.cat([x.reshape(-1) for x in grad(START)])
    h = torch.block_diag(A, 3.0 * torch.eye(4, dtype=torch.float64))
    want = torch.cat([p.reshape(-1) for p in START]) - 0.5 * torch.linalg.solve(
        h + 2.0 * torch.eye(7, dtype=torch.float64), g
    )
    assert torch.allclose(torch.cat([p.detach().reshape(-1) for p in params]), want, atol=1e-10)


def test_lbfgs_reaches_the_logistic_regression_optimum() -> None:
    l2 = 0.01
    spec = make_spec(
        dataset={"name": "breast_cancer"},
        model={"hidden": []},
        optimizer={"name": "lbfgs", "lr": 1.0},
        regularization={"l2": l2},
        training={"epochs": 5, "full_batch": True, "batch_size": 1024},
    )
    trainer = Trainer(spec, dtype=torch.float64).setup()
    trainer.train()
    x, y = trainer.data.x_train.numpy(), trainer.data.y_train.numpy()
    n, d = x.shape

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        # Mean softmax cross-entropy of a 2-class linear model + (l2/2)‖W‖² (bias free).
        w, b = theta[: 2 * d].reshape(2, d), theta[2 * d :]
        z = x @ w.T + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        value = -np.log(p[np.arange(n), y]).mean() + l2 / 2 * (w**2).sum()
        p[np.arange(n), y] -= 1
        g_w = p.T @ x / n + l2 * w
        return value, np.concatenate([g_w.ravel(), p.mean(0)])

    best = minimize(objective, np.zeros(2 * d + 2), jac=True, method="BFGS", tol=1e-12)
    w = trainer.model.head.weight.detach().numpy()
    reached = objective(np.concatenate([w.ravel(), trainer.model.head.bias.detach().numpy()]))
    assert abs(reached[0] - best.fun) < 1e-4, (reached[0], best.fun)


def test_build_optimizer_uses_torch_sgd_where_it_is_the_same() -> None:
    def built(optimizer: dict | None = None, **patch):
        spec = make_spec(optimizer={"name": "sgd", **(optimizer or {})}, **patch)
        return build_optimizer(spec, torch.nn.Linear(2, 2))

    assert type(built()) is torch.optim.SGD  # constant lr: the two forms agree
    assert type(built(schedule={"name": "inverse_time"})) is SGD
    assert type(built(schedule={"name": "step"}, optimizer={"momentum": 0.0})) is torch.optim.SGD
    weight_decay = built(regularization={"weight_decay": 0.1})
    # Decay applies to the weight matrix, not the bias.
    assert [g["weight_decay"] for g in weight_decay.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in weight_decay.param_groups] == [1, 1]
