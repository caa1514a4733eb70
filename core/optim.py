"""The optimizers of the course text, with its formulas.

Where the text's formula and a torch.optim optimizer compute exactly the same thing, the torch
one is used (it is tested for the equality); elsewhere a small Optimizer subclass applies the
text's formula.

Speed: the models here are tiny, so a step costs what its kernel launches cost, not arithmetic
(a few µs each, even for torch._foreach_* ops on CPU). The custom optimizers therefore keep each
group's state (momentum, second moment) as one flat vector, concatenate the gradients into one
flat vector, and do the arithmetic in a handful of single-tensor ops; the per-parameter state
entries that state_dict() saves are views of those flat buffers.

Conventions shared by the first-order optimizers: `maximize` negates the gradient (θ ← θ + η∇L
for SGD), and `weight_decay` either adds weight_decay·θ to the gradient (coupled: an L2 term by
another name) or, with decoupled=True, shrinks θ by η·weight_decay·θ outside the adaptive
update. build_optimizer couples it for SGD, where the two are the same step as the spec's l2,
and decouples it for RMSprop, Adam and AdamW, where weight decay is what the notes call it: a
part of the optimizer whose size the learning rate sets, not a gradient divided by √v. A
parameter of a group whose .grad is None counts as having a zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from core.spec import JobSpec

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


class _FlatOptimizer(Optimizer):
    """Base of the first-order optimizers: flat gradient and flat state per parameter group.

    Every flat vector (state or scratch) comes with its per-parameter views, made once: the
    update is written into a flat vector and applied with one foreach op over those views.
    Scratch vectors are reused across steps: a fresh multi-megabyte tensor per step would
    cost more in page faults than the arithmetic for the larger models.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # torch.optim wraps step() in a profiler range and step-hook dispatch, about 6 µs a call
        # (~4% of a small model's whole step). These optimizers run no step hooks: marking
        # step as already wrapped keeps it bare.
        cls.step.hooked = True  # type: ignore[attr-defined]

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._flat: dict[tuple[int, str], tuple[torch.Tensor, list[torch.Tensor]]] = {}

    @staticmethod
    def _evaluate(closure: Callable[[], Any] | None) -> Any:
        """The closure's loss, with gradients on (step itself runs under no_grad)."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flat.clear()  # the loaded per-parameter tensors are gathered again on the next step

    def zero_grad(self, set_to_none: bool = True) -> None:
        # torch's zero_grad wraps this loop in a profiler range, which costs more than the loop.
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    def _vector(
        self, index: int, name: str, state: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Group `index`'s flat vector `name` and its per-parameter views. A state vector starts
        from self.state[p][name] (zero if absent), which then become its views."""
        found = self._flat.get((index, name))
        if found is not None:
            return found
        params = self.param_groups[index]["params"]
        if state:
            parts = [self.state[p].get(name, torch.zeros_like(p)).reshape(-1) for p in params]
            flat = torch.cat(parts)
        else:
            flat = torch.empty(
                sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device
            )
        views = [
            v.view_as(p)
            for v, p in zip(flat.split([p.numel() for p in params]), params, strict=True)
        ]
        if state:
            for p, view in zip(params, views, strict=True):
                self.state[p][name] = view
        self._flat[(index, name)] = (flat, views)
        return flat, views

    def _flat_grad(self, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The group's gradient as one vector (a scratch vector, overwritten every step),
        negated for maximize, plus coupled weight decay."""
        group = self.param_groups[index]
        params = group["params"]
        grad, views = self._vector(index, "grad", state=False)
        grads = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params
        ]
        torch.cat(grads, out=grad)
        if group["maximize"]:
            grad.neg_()
        if group["weight_decay"] and not group.get("decoupled"):
            weights, _ = self._vector(index, "weights", state=False)
            torch.cat([p.detach().reshape(-1) for p in params], out=weights)
            grad.add_(weights, alpha=group["weight_decay"])
        return grad, views

    def _count_step(self, params: list[torch.Tensor]) -> int:
        for p in params:
            self.state[p]["step"] = self.state[p].get("step", 0) + 1
        return self.state[params[0]]["step"]


class SGD(_FlatOptimizer):
    """SGD with momentum in the text's form: m ← γm + η∇L; θ ← θ − m.

    torch.optim.SGD keeps b ← γb + ∇L and steps θ ← θ − ηb. With a constant η the two are the
    same (m = ηb), and build_optimizer uses torch's. They differ when η changes: here the
    momentum carries the learning rates its past gradients were taken with, so a decayed η
    slows the update gradually; in torch's form the new η rescales the whole buffer at once.

    Nesterov (look-ahead): the text takes the gradient at θ − γm, the point the momentum is
    about to carry θ to. Storing that look-ahead point φ = θ − γm as the parameters turns it
    into an update that needs only the gradient at the parameters:
        m ← γm + η∇L(φ);  φ ← φ − (η∇L(φ) + γm)
    which is also what torch's nesterov=True computes (with η factored out).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self._evaluate(closure)
        for index, group in enumerate(self.param_groups):
            params, lr, gamma = group["params"], group["lr"], group["momentum"]
            grad, grad_views = self._flat_grad(index)
            if gamma == 0:
                torch._foreach_add_(params, grad_views, alpha=-lr)
                continue
            m, m_views = self._vector(index, "momentum_buffer", state=True)
            m.mul_(gamma).add_(grad, alpha=lr)  # m ← γm + η∇L
            if group["nesterov"]:
                grad.mul_(lr).add_(m, alpha=gamma)  # η∇L + γm
                torch._foreach_sub_(params, grad_views)
            else:
                torch._foreach_sub_(params, m_views)  # θ ← θ − m
        return loss


class RMSprop(_FlatOptimizer):
    """RMSprop as in the text: v ← γv + (1−γ)∇L²;  θ ← θ − η∇L / √(v + ε).

    torch.optim.RMSprop divides by √v + ε instead (ε outside the root), so it is not used.
    `alpha` is the text's γ. decoupled=True: θ ← θ − η·weight_decay·θ before the update.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 0.001,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self._evaluate(closure)
        for index, group in enumerate(self.param_groups):
            params, alpha = group["params"], group["alpha"]
            grad, grad_views = self._flat_grad(index)
            if group.get("decoupled") and group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            v, _ = self._vector(index, "square_avg", state=True)
            v.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
            work, _ = self._vector(index, "work", state=False)
            grad.div_(torch.add(v, group["eps"], out=work).sqrt_())
            torch._foreach_add_(params, grad_views, alpha=-group["lr"])
        return loss


class Adam(_FlatOptimizer):
    """Adam as in the text, with bias correction optional.

        m ← β₁m + (1−β₁)∇L;  v ← β₂v + (1−β₂)∇L²
        m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ)   (bias_correction=False: m̂ = m, v̂ = v)
        θ ← θ − η m̂ / √(v̂ + ε)

    torch.optim.Adam divides by √v̂ + ε (ε outside the root), so it is not used.

    Both moments start at zero, so early on m and v are biased towards zero. Without the
    correction the update is m/√v = (1−β₁ᵗ)/√(1−β₂ᵗ) times the corrected one: with the default
    betas about 3.2× larger at the first step (m shrinks less than √v), up to 6× around step 10,
    and only near 1 after some thousands of steps, when both 1−βᵗ reach 1 and the two agree.

    decoupled=True is AdamW: θ ← θ − η·weight_decay·θ before the Adam update, so the decay is
    not divided by √v̂ as a gradient term would be.
    """

    def __init__(
        self,
        params: Params,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        decoupled: bool = False,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            decoupled=decoupled,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = self._evaluate(closure)
        for index, group in enumerate(self.param_groups):
            params, lr, (beta1, beta2) = group["params"], group["lr"], group["betas"]
            grad, _ = self._flat_grad(index)
            m, _ = self._vector(index, "exp_avg", state=True)
            v, _ = self._vector(index, "exp_avg_sq", state=True)
            t = self._count_step(params)
            if group["decoupled"] and group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            m.lerp_(grad, 1 - beta1)  # m ← β₁m + (1−β₁)∇L
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # With c₁ = 1−β₁ᵗ, c₂ = 1−β₂ᵗ:  m̂/√(v̂+ε) = (m/c₁)·√c₂/√(v + ε·c₂), one op fewer
            # than dividing v by c₂ first.
            c1, c2 = (1 - beta1**t, 1 - beta2**t) if group["bias_correction"] else (1.0, 1.0)
            work, work_views = self._vector(index, "work", state=False)
            torch.add(v, group["eps"] * c2, out=work).sqrt_()
            torch.div(m, work, out=work)
            torch._foreach_add_(params, work_views, alpha=-lr * math.sqrt(c2) / c1)
        return loss


class Newton(Optimizer):
    """Newton's method: θ ← θ − η (H + λI)⁻¹ ∇L with the exact Hessian H of the loss.

    The loss must be given as a pure function of the flattened parameter vector, split into
    terms whose sum is the loss (e.g. one per chunk of the training set, so that the memory
    of the forward-over-reverse Hessian stays bounded): step(closure, n_terms) sums the
    gradient and Hessian of closure(θ, i) for i in range(n_terms). Damping λ lifts every
    eigenvalue of H, which shortens the step and, once λ exceeds H's most negative eigenvalue,
    turns an indefinite H (a saddle) positive definite; η = 1 is the plain Newton step. A
    singular H is inverted on its range (pseudo-inverse). The gradient is left in each
    parameter's .grad, as after backward().
    """

    def __init__(self, params: Params, lr: float = 1.0, damping: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, damping=damping))
        if len(self.param_groups) != 1:
            raise ValueError("Newton takes a single parameter group")

    def step(self, closure: Callable[..., torch.Tensor], n_terms: int = 1) -> torch.Tensor:  # type: ignore[override]
        group = self.param_groups[0]
        params: list[torch.Tensor] = group["params"]
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        grad = torch.zeros_like(flat)
        hessian = flat.new_zeros(flat.numel(), flat.numel())
        loss = flat.new_zeros(())
        for i in range(n_terms):

            def term(theta: torch.Tensor, i: int = i) -> torch.Tensor:
                return closure(theta, i)

            g, value = torch.func.grad_and_value(term)(flat)
            grad += g
            loss += value.detach()
            hessian += torch.func.hessian(term)(flat)
        if group["damping"]:
            hessian.diagonal().add_(group["damping"])
        # The pseudo-inverse gives the least-norm solution, so a singular H (softmax's logits
        # are shift-invariant, hidden units can be redundant) still gives a finite step.
        delta = torch.linalg.pinv(hessian, hermitian=True) @ grad
        with torch.no_grad():
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = grad[offset : offset + n].view_as(p).clone()
                p.sub_(delta[offset : offset + n].view_as(p), alpha=group["lr"])
                offset += n
        return loss


def decayed(parameter: torch.Tensor) -> bool:
    """Weight matrices and kernels are decayed/penalized; biases and norm scales are not."""
    return parameter.dim() >= 2


def param_groups(
    model: nn.Module, weight_decay: float, body_lr_scale: float | None = None
) -> list[dict[str, Any]]:
    """The trainable parameters in optimizer groups: apart by weight decay (weight matrices
    and kernels decay, the rest not); with body_lr_scale, model.body's parameters apart
    from the rest, their groups marked "lr_scale" (the training loop sets each group's lr
    to the schedule's lr × its lr_scale)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if body_lr_scale is None:
        return decay_groups(params, weight_decay)
    body = model.body
    assert isinstance(body, nn.Module)
    in_body = {id(p) for p in body.parameters()}
    head = [p for p in params if id(p) not in in_body]
    backbone = [p for p in params if id(p) in in_body]
    return decay_groups(head, weight_decay, 1.0) + decay_groups(
        backbone, weight_decay, body_lr_scale
    )


def decay_groups(
    params: Sequence[torch.Tensor], weight_decay: float, lr_scale: float | None = None
) -> list[dict[str, Any]]:
    scale = {} if lr_scale is None else {"lr_scale": lr_scale}
    if not weight_decay:
        return [{"params": params, **scale}] if params or lr_scale is None else []
    groups = [
        {"params": [p for p in params if decayed(p)], "weight_decay": weight_decay, **scale},
        {"params": [p for p in params if not decayed(p)], "weight_decay": 0.0, **scale},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(spec: JobSpec, model: nn.Module) -> Optimizer:
    o = spec.optimizer
    backbone = spec.backbone
    scale = backbone.lr_scale if backbone is not None else None
    groups = param_groups(model, spec.regularization.weight_decay, scale)
    assert o.lr is not None  # filled by the spec's validator
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = o.lr * group["lr_scale"]
    if o.name == "sgd":
        assert o.momentum is not None
        if o.momentum == 0 or spec.schedule.name == "constant":
            # Equal to the text's form at a constant lr (see SGD's docstring); foreach is faster.
            return torch.optim.SGD(
                groups,
                lr=o.lr,
                momentum=o.momentum,
                nesterov=bool(o.nesterov),
                maximize=bool(o.maximize),
                foreach=True,
            )
        return SGD(
            groups,
            lr=o.lr,
            momentum=o.momentum,
            nesterov=bool(o.nesterov),
            maximize=bool(o.maximize),
        )
    if o.name == "rmsprop":
        assert o.alpha is not None and o.eps is not None
        return RMSprop(
            groups,
            lr=o.lr,
            alpha=o.alpha,
            eps=o.eps,
            decoupled=True,
            maximize=bool(o.maximize),
        )
    if o.name in ("adam", "adamw"):
        assert o.betas is not None and o.eps is not None
        return Adam(
            groups,
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            bias_correction=bool(o.bias_correction),
            # Weight decay outside the adaptive scaling: for adam as for adamw (AdamW is the
            # name PyTorch users know for it); a coupled decay is the spec's l2.
            decoupled=True,
            maximize=bool(o.maximize),
        )
    if o.name == "newton":
        return Newton(groups, lr=o.lr, damping=o.damping or 0.0)
    assert o.history_size is not None and o.max_iter is not None
    return torch.optim.LBFGS(
        groups,
        lr=o.lr,
        max_iter=o.max_iter,
        history_size=o.history_size,
        line_search_fn=None if o.line_search == "none" else "strong_wolfe",
    )
