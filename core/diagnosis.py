"""The fit diagnosis of a job (notes 4.8.1 and 4.8.2): plain Python over per-epoch numbers.

diagnose() reads the per-epoch metrics the trainer records (train_loss, val_loss,
train_accuracy, grad_norm and the per-layer grad_norm/<layer>) and returns a JSON-ready dict:
the generalization gap of every epoch (val_loss − train_loss), every finding that applies
with its evidence (epochs and numbers) and the remedies of the notes, and one verdict, the
first finding in this order:

  exploding_gradients  the gradient norm is non-finite, or has grown ≥ 100× (and ≥ 10)
  vanishing_gradients  the first layer's gradient norm is < 1e-3 of the largest layer's
  overfitting          since its best epoch (≥ 2 epochs ago) the validation loss rose (by > 5%)
                       while the training loss fell, and the gap grew and is positive
  underfitting         the validation loss still fell at the last epoch (by ≥ 2% of all its
                       fall since the start, which counts the loss before training when
                       known), or the training or validation accuracy is not above the
                       majority-class baseline (the training split's most frequent class)
  val_below_train      validation loss more than 5% below training loss in each of the last
                       epochs (up to 3); its evidence counts the samples the splits share.
                       Ranked below underfitting: the training loss is the mean over an epoch
                       while the model was still learning, so a run still learning fast shows
                       it for that reason alone
  good_fit             none of these
  too_early            no epoch yet, or fewer than 3 while the job runs and nothing is wrong
                       with the gradients

No torch here: the API and the worker may call it on stored metrics.
"""

from __future__ import annotations

import math
import re
from typing import Any

from core.spec import JobSpec

GRAD_NORM_PREFIX = "grad_norm/"

EXPLODING_GROWTH = 100.0  # "orders of magnitude": two
EXPLODING_MIN_NORM = 10.0  # and large in absolute terms, not a waking tiny-init network
VANISHING_RATIO = 1e-3  # first layer's gradient norm / the largest layer's
OVERFIT_MIN_EPOCHS = 2  # epochs since the best validation loss
OVERFIT_MIN_RISE = 0.05  # relative rise of the validation loss above its best
VAL_BELOW_MARGIN = 0.05  # relative: val_loss < (1 − margin)·train_loss
VAL_BELOW_EPOCHS = 3
STILL_FALLING_SHARE = 0.02  # last epoch's fall / the whole fall so far
LIVE_MIN_EPOCHS = 3

REMEDIES: dict[str, list[str]] = {
    "overfitting": [
        "regularization: an l1 or l2 penalty or weight_decay (regularization), dropout "
        "(model.dropout), data augmentation (augmentation) or batch norm (model.norm)",
        "more training data",
        "a smaller model: fewer or narrower layers (model.hidden, model.channels)",
        "use the best checkpoint, not the last",
    ],
    "underfitting": [
        "more epochs (training.epochs)",
        "a bigger model: more or wider layers (model.hidden, model.channels)",
        "learning-rate decay (schedule)",
        "a better optimizer, e.g. momentum or Adam (optimizer)",
    ],
    "val_below_train": [
        "check for leakage: validation samples that are also training samples",
        "dropout and augmentation make training harder than evaluation: expected when they "
        "are on; compare the training split measured in evaluation mode",
        "look for a bug, or a validation split that is not representative",
    ],
    "exploding_gradients": [
        "gradient clipping (regularization.grad_clip_norm)",
        "normalize activations: batch or layer normalization (model.norm)",
        "Xavier (tanh, sigmoid) or Kaiming (ReLU) initialization (model.init)",
        "a lower learning rate (optimizer.lr)",
    ],
    "vanishing_gradients": [
        "Xavier (tanh, sigmoid) or Kaiming (ReLU) initialization, not tiny weights (model.init)",
        "normalize activations: batch or layer normalization (model.norm)",
        "a non-saturating activation such as ReLU instead of sigmoid or tanh (model.activation)",
    ],
    "good_fit": [],
    "too_early": [],
}


def regularization_summary(spec: JobSpec) -> dict[str, Any]:
    """What makes this job's training harder, and its stopping rule, kept apart: early
    stopping does not make training harder, so it is not a regularizer (notes 4.8.1)."""
    reg, model = spec.regularization, spec.model
    active = [name for name in ("l1", "l2", "weight_decay") if getattr(reg, name)]
    if model.dropout > 0:
        active.append("channel_dropout" if model.arch == "cnn" else "dropout")
    if model.norm == "batch":
        active.append("batch_norm")  # batch statistics add noise (notes 4.8.4)
    if spec.augmentation:
        active.append("augmentation")
    summary: dict[str, Any] = {
        "regularizers": active,
        "stopping_rule": "early_stopping" if spec.early_stopping is not None else None,
    }
    if spec.early_stopping is not None:
        summary["note"] = (
            "early stopping is a stopping rule, not a regularizer: it does not make training "
            "harder, it stops it; the best checkpoint is kept either way"
        )
    return summary


def diagnose(
    history: list[dict[str, float]],
    *,
    task: str,
    majority_baseline: float | None,
    shared_samples: int,
    final: bool,
    initial: dict[str, float] | None = None,
    regularization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The diagnosis after len(history) epochs (history[i] holds epoch i + 1's metrics).

    initial: the metrics of the model before training (val_loss), when known.
    regularization: regularization_summary(spec), echoed and used as evidence.
    """
    n = len(history)
    train = [_number(h.get("train_loss")) for h in history]
    val = [_number(h.get("val_loss")) for h in history]
    gap = [
        v - t if v is not None and t is not None else None for t, v in zip(train, val, strict=True)
    ]
    active = (regularization or {}).get("regularizers", [])

    findings: dict[str, dict[str, Any]] = {}
    for name, check in (
        ("exploding_gradients", lambda: _exploding(history)),
        ("vanishing_gradients", lambda: _vanishing(history)),
        ("overfitting", lambda: _overfitting(train, val, gap)),
        ("val_below_train", lambda: _val_below_train(train, val, shared_samples, active)),
        ("underfitting", lambda: _underfitting(history, val, task, majority_baseline, initial)),
    ):
        found = check() if n else None
        if found is not None:
            findings[name] = found

    order = [
        "exploding_gradients",
        "vanishing_gradients",
        "overfitting",
        "underfitting",
        "val_below_train",
    ]
    verdict = next((name for name in order if name in findings), "good_fit")
    gradients_wrong = verdict in ("exploding_gradients", "vanishing_gradients")
    if n == 0 or (not final and n < LIVE_MIN_EPOCHS and not gradients_wrong):
        verdict = "too_early"

    if verdict in findings:
        evidence, summary = findings[verdict]["evidence"], findings[verdict]["summary"]
    elif verdict == "too_early":
        evidence = {"epochs": n, "needs": 1 if final else LIVE_MIN_EPOCHS}
        summary = f"too early to judge: {n} epoch{'s' if n != 1 else ''} so far"
    else:
        evidence = {"epochs": n}
        summary = "no sign of overfitting, underfitting, leakage or gradient problems"
    remedies = list(REMEDIES[verdict])
    if verdict == "overfitting":
        best = findings["overfitting"]["evidence"]["best"]["epoch"]
        remedies[-1] = f"use the best checkpoint (epoch {best}), not the last"
    result: dict[str, Any] = {
        "verdict": verdict,
        "summary": summary,
        "evidence": evidence,
        "remedies": remedies,
        "gap": gap,
        "findings": [{"verdict": name, **found} for name, found in findings.items()],
        "shared_samples": shared_samples,
        "majority_baseline": majority_baseline,
        "epoch": n,
        "final": final,
    }
    if regularization is not None:
        result["regularization"] = regularization
    return result


# --------------------------------------------------------------------------- the checks


def _exploding(history: list[dict[str, float]]) -> dict[str, Any] | None:
    for epoch, h in enumerate(history, 1):
        for name in ("grad_norm", "train_loss"):
            value = h.get(name)
            if value is not None and not math.isfinite(value):
                return _finding(
                    {"epoch": epoch, "metric": name, "value": str(value)},
                    f"{name} is {value} at epoch {epoch}",
                )
    norms = [_number(h.get("grad_norm")) for h in history]
    last = norms[-1]
    earlier = [(v, e) for e, v in enumerate(norms[:-1], 1) if v is not None and v > 0]
    if last is None or not earlier:
        return None
    low, low_epoch = min(earlier)
    growth = last / low
    if growth >= EXPLODING_GROWTH and last >= EXPLODING_MIN_NORM:
        n = len(history)
        return _finding(
            {
                "from_epoch": low_epoch,
                "from_grad_norm": low,
                "epoch": n,
                "grad_norm": last,
                "growth": growth,
            },
            f"gradient norm grew {growth:.3g}x, from {low:.3g} at epoch {low_epoch} "
            f"to {last:.3g} at epoch {n}",
        )
    return None


def _vanishing(history: list[dict[str, float]]) -> dict[str, Any] | None:
    last = history[-1]
    layers = sorted((k for k in last if k.startswith(GRAD_NORM_PREFIX)), key=_natural)
    norms = {k[len(GRAD_NORM_PREFIX) :]: _number(last[k]) for k in layers}
    if len(norms) < 2 or any(v is None for v in norms.values()):
        return None
    values: dict[str, float] = {k: v for k, v in norms.items() if v is not None}
    top_name = max(values, key=lambda k: values[k])
    top = values[top_name]
    first_name = next(iter(values))
    ratio = values[first_name] / top if top > 0 else 0.0
    if ratio >= VANISHING_RATIO:
        return None
    small = [k for k, v in values.items() if top == 0 or v / top < VANISHING_RATIO]
    epoch = len(history)
    return _finding(
        {
            "epoch": epoch,
            "first_layer": first_name,
            "largest_layer": top_name,
            "ratio": ratio,
            "vanishing_layers": small,
            "layer_grad_norms": values,
        },
        f"at epoch {epoch} the first layer's gradient norm ({first_name}: "
        f"{values[first_name]:.3g}) is {ratio:.2g} of the largest ({top_name}: {top:.3g}); "
        f"{len(small)} of {len(values)} layers are below {VANISHING_RATIO:g} of it",
    )


def _overfitting(
    train: list[float | None], val: list[float | None], gap: list[float | None]
) -> dict[str, Any] | None:
    n = len(val)
    finite = [(v, e) for e, v in enumerate(val, 1) if v is not None]
    if not finite or val[-1] is None or train[-1] is None:
        return None
    best_val, best = min(finite)
    since = n - best
    last_val = val[-1]
    best_train, last_train = train[best - 1], train[-1]
    if (
        since < OVERFIT_MIN_EPOCHS
        or best_train is None
        or last_val <= best_val + OVERFIT_MIN_RISE * abs(best_val)
        or not last_train < best_train
    ):
        return None
    best_gap, last_gap = gap[best - 1], gap[-1]
    # The gap grew, and the model now does better on training than on validation data.
    if best_gap is None or last_gap is None or not last_gap > max(best_gap, 0.0):
        return None
    return _finding(
        {
            "best": {
                "epoch": best,
                "val_loss": best_val,
                "train_loss": best_train,
                "gap": best_gap,
            },
            "last": {"epoch": n, "val_loss": last_val, "train_loss": last_train, "gap": last_gap},
            "epochs_since_best": since,
        },
        f"validation loss rose for {since} epochs after epoch {best} ({best_val:.4g} → "
        f"{last_val:.4g}) while training loss fell ({best_train:.4g} → {last_train:.4g}); "
        f"the gap grew from {best_gap:.3g} to {last_gap:.3g}",
    )


def _val_below_train(
    train: list[float | None], val: list[float | None], shared: int, active: list[str]
) -> dict[str, Any] | None:
    k = min(VAL_BELOW_EPOCHS, len(val))
    first = len(val) - k + 1
    pairs = list(zip(train[-k:], val[-k:], strict=True))
    if any(t is None or v is None or not v < (1 - VAL_BELOW_MARGIN) * t for t, v in pairs):
        return None
    harder = [name for name in active if name in ("dropout", "channel_dropout", "augmentation")]
    epochs = list(range(first, len(val) + 1))
    reasons = []
    if shared:
        reasons.append(
            f"{shared} validation sample{'s are' if shared != 1 else ' is'} also in the "
            "training split (leakage)"
        )
    if harder:
        verb = "makes" if len(harder) == 1 else "make"
        reasons.append(f"{' and '.join(harder)} {verb} training harder than evaluation")
    return _finding(
        {
            "epochs": epochs,
            "train_loss": [t for t, _ in pairs],
            "val_loss": [v for _, v in pairs],
            "shared_samples": shared,
            "harder_training": harder,
        },
        f"validation loss is below training loss in epochs {epochs[0]}–{epochs[-1]} "
        f"({pairs[-1][1]:.4g} vs {pairs[-1][0]:.4g} at the last)"
        + (f": {'; '.join(reasons)}" if reasons else ""),
    )


def _underfitting(
    history: list[dict[str, float]],
    val: list[float | None],
    task: str,
    majority_baseline: float | None,
    initial: dict[str, float] | None,
) -> dict[str, Any] | None:
    evidence: dict[str, Any] = {}
    reasons = []
    start = _number((initial or {}).get("val_loss"))
    series = ([(0, start)] if start is not None else []) + [
        (e, v) for e, v in enumerate(val, 1) if v is not None
    ]
    n = len(history)
    if len(series) >= 2 and series[-1][0] == n:
        (_, previous), (_, last) = series[-2], series[-1]
        first_epoch, first = series[0]
        fall, total = previous - last, first - last
        best = min(v for _, v in series)
        if fall > 0 and last == best and fall >= STILL_FALLING_SHARE * total:
            evidence["still_falling"] = {
                "epoch": n,
                "val_loss": last,
                "previous_val_loss": previous,
                "fall": fall,
                "share_of_total_fall": fall / total,
                "since_epoch": first_epoch,
                "start_val_loss": first,
            }
            reasons.append(
                f"validation loss still falling at epoch {n} ({previous:.4g} → {last:.4g}, "
                f"{fall / total:.0%} of its fall since epoch {first_epoch})"
            )
    # A model no better than always predicting the training split's most frequent class
    # (segmentation: every pixel the most frequent class, the background) has not learned.
    classes = task in ("classification", "segmentation")
    if classes and majority_baseline is not None:
        for split in ("train", "val"):
            accuracy = _number(history[-1].get(f"{split}_accuracy"))
            if accuracy is None or accuracy > majority_baseline:
                continue
            evidence.setdefault(
                "below_baseline", {"epoch": n, "majority_baseline": majority_baseline}
            )
            evidence["below_baseline"][f"{split}_accuracy"] = accuracy
            name = "training" if split == "train" else "validation"
            reasons.append(
                f"{name} accuracy {accuracy:.3f} is not above the majority-class baseline "
                f"{majority_baseline:.3f}"
            )
    if not reasons:
        return None
    return _finding(evidence, "; ".join(reasons))


# --------------------------------------------------------------------------- helpers


def _finding(evidence: dict[str, Any], summary: str) -> dict[str, Any]:
    return {"evidence": evidence, "summary": summary}


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _natural(name: str) -> list[Any]:
    """Sort key putting body.2 before body.10 (module paths in model order)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t]
