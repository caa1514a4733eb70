"""Drawing a job's curves with matplotlib (imported on first use, Agg backend, no pyplot).

Loss (train and validation) on the left; accuracy, when the job reports one, on the right.
The best epoch is marked with a dot and a dotted line, an early stop with a dashed line.
A job with no finished epoch yet gets empty axes with a note.
"""

import io
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from api.errors import NotFound
from api.metrics.downsample import Record, downsample, key_metrics
from api.metrics.service import epoch_records
from store.db import session_scope
from store.models import Job

MAX_POINTS = 2000
DPI = 100
# matplotlib promises no thread safety (its font cache and text layout are shared), and a
# render takes a fraction of a second: one at a time.
_render = threading.Lock()


@dataclass
class Curves:
    title: str
    status: str
    monitor: str
    best_epoch: int | None
    stop: dict[str, Any] | None
    records: list[Record]


def read_curves(job_id: str, owner: str) -> Curves:
    """Blocking: run it in the threadpool."""
    with session_scope() as session:
        job = session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).one_or_none()
        if job is None:
            raise NotFound(f"job {job_id} not found")
        records = epoch_records(session, job_id, after=0, through=job.epoch)
        return Curves(
            title=job.name or job.id,
            status=job.status,
            monitor=job.monitor,
            best_epoch=job.best_epoch,
            stop=job.stop,
            records=downsample(records, MAX_POINTS, key_metrics(records, job.monitor)),
        )


def render_png(curves: Curves, width: int, height: int) -> bytes:
    """The PNG, exactly ``width`` × ``height`` pixels. Blocking: run it in the threadpool."""
    with _render:
        return _render_png(curves, width, height)


def _render_png(curves: Curves, width: int, height: int) -> bytes:
    out = io.BytesIO()
    draw(curves, width, height).savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def draw(curves: Curves, width: int, height: int) -> Any:
    """The matplotlib Figure of the PNG (laid out, not yet saved)."""
    from matplotlib.figure import Figure  # lazily: the API starts without matplotlib

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    names = {name for _, metrics in curves.records for name in metrics}
    accuracy = sorted(n for n in names if n.endswith("accuracy"))
    axes = figure.subplots(1, 2 if accuracy else 1, squeeze=False)[0]
    figure.suptitle(f"{curves.title} ({curves.status})")

    loss_names: list[str] = [n for n in ("train_loss", "val_loss") if n in names]
    _panel(axes[0], curves, loss_names or sorted(n for n in names if "loss" in n), "loss")
    if accuracy:
        _panel(axes[1], curves, accuracy, "accuracy")
    if not curves.records:
        axes[0].text(
            0.5, 0.5, "no finished epoch yet", ha="center", va="center",
            transform=axes[0].transAxes, color="gray",
        )  # fmt: skip
    figure.tight_layout()
    return figure


def _panel(ax: Any, curves: Curves, names: list[str], ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    epochs = [epoch for epoch, _ in curves.records]
    for name in names:
        values = [metrics.get(name) for _, metrics in curves.records]
        ax.plot(epochs, [float("nan") if v is None else v for v in values], label=name)
    best = curves.best_epoch
    if best:
        ax.axvline(best, color="tab:green", linestyle=":", linewidth=1, label=f"best ({best})")
        for name in names:
            value = next((m.get(name) for e, m in curves.records if e == best), None)
            if value is not None and name == curves.monitor:
                ax.plot([best], [value], "o", color="tab:green")
    stop = curves.stop or {}
    if stop.get("reason") == "early_stopping" and stop.get("epoch"):
        ax.axvline(
            stop["epoch"], color="tab:red", linestyle="--", linewidth=1,
            label=f"early stop ({stop['epoch']})",
        )  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
