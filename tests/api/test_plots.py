"""plot.png: the job's curves where its metrics put them, the best epoch and an early stop
marked, in a PNG of the asked size; empty axes before the first epoch; 404 otherwise.

The pixels are read back from the PNG the API serves, at the places the plot's own axes map
each epoch's values to: a blank or misdrawn image fails."""

import io
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from PIL import Image

from api.plots.service import draw, read_curves
from store.models import JobStatus
from tests.api.builders import add_epochs, history, make_job

GREEN, RED = to_rgb("tab:green"), to_rgb("tab:red")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def pixels(data: bytes) -> np.ndarray:
    """height × width × RGB in [0, 1]."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float) / 255


def near(image: np.ndarray, x: float, y: float, color: tuple[float, ...], radius: int = 2) -> bool:
    """Whether a pixel within ``radius`` of display point (x, y) has ``color`` (give or take
    anti-aliasing). Display y grows upwards, image rows downwards."""
    row, col = round(image.shape[0] - y), round(x)
    patch = image[max(0, row - radius) : row + radius + 1, max(0, col - radius) : col + radius + 1]
    return bool((np.abs(patch - color).max(axis=2) < 0.15).any())


def column_share(image: np.ndarray, ax: Any, x: float, color: tuple[float, ...]) -> float:
    """The share of the axes' height at data x that has ``color`` (a vertical line's ink)."""
    box = ax.get_window_extent()
    col = round(ax.transData.transform((x, 0))[0])
    top, bottom = round(image.shape[0] - box.y1) + 2, round(image.shape[0] - box.y0) - 2
    strip = image[top:bottom, col - 1 : col + 2]
    return float((np.abs(strip - color).max(axis=2) < 0.15).any(axis=1).mean())


def test_the_plot_draws_every_curve_and_marks_the_best_and_the_early_stop(
    sqlite_client: TestClient,
) -> None:
    epochs = history(17)
    job_id = make_job(
        status=JobStatus.SUCCEEDED,
        best_epoch=12,
        best_value=epochs[11]["val_loss"],
        stop={"reason": "early_stopping", "rule": "patience", "epoch": 17, "detail": ""},
    )
    add_epochs(job_id, epochs)
    response = sqlite_client.get(f"/v1/jobs/{job_id}/plot.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (1000, 450)
    image = pixels(response.content)

    # The same figure, laid out as the API laid it out: where each value should be.
    figure = draw(read_curves(job_id, "local"), 1000, 450)
    FigureCanvasAgg(figure).draw()
    loss, accuracy = figure.axes
    drawn = {line.get_label(): line for ax in (loss, accuracy) for line in ax.get_lines()}
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(drawn)
    for name, ax in (("train_loss", loss), ("val_loss", loss), ("val_accuracy", accuracy)):
        line = drawn[name]
        assert list(line.get_xdata()) == list(range(1, 18)), name
        assert list(line.get_ydata()) == [e[name] for e in epochs], name
        color = to_rgb(line.get_color())
        points = ax.transData.transform(list(zip(range(1, 18), line.get_ydata(), strict=True)))
        hits = sum(near(image, x, y, color) for x, y in points)
        assert hits >= 16, f"{name}: {hits} of 17 epochs drawn where they belong"

    # The best epoch: a green dotted line at 12 on both panels, a dot on the monitored curve.
    marks = {line.get_label(): line for line in loss.get_lines()}
    assert list(marks["best (12)"].get_xdata()) == [12, 12]
    for ax in (loss, accuracy):
        assert column_share(image, ax, 12, GREEN) > 0.15  # dotted
    dot = [line for line in loss.get_lines() if line.get_marker() == "o"]
    assert [(list(d.get_xdata()), list(d.get_ydata())) for d in dot] == [
        ([12], [epochs[11]["val_loss"]])
    ]
    x, y = loss.transData.transform((12, epochs[11]["val_loss"]))
    assert near(image, x, y, GREEN)
    # The early stop: a red dashed line at 17, and none where no stop was.
    assert list(marks["early stop (17)"].get_xdata()) == [17, 17]
    for ax in (loss, accuracy):
        assert column_share(image, ax, 17, RED) > 0.3  # dashed
        assert column_share(image, ax, 5, RED) == 0
        assert column_share(image, ax, 5, GREEN) == 0

    small = sqlite_client.get(f"/v1/jobs/{job_id}/plot.png", params={"width": 640, "height": 300})
    assert png_size(small.content) == (640, 300)


def test_plot_of_a_job_with_no_epoch_yet(sqlite_client: TestClient) -> None:
    job_id = make_job(status=JobStatus.QUEUED)
    response = sqlite_client.get(f"/v1/jobs/{job_id}/plot.png")
    assert response.status_code == 200
    assert png_size(response.content) == (1000, 450)
    figure = draw(read_curves(job_id, "local"), 1000, 450)
    [ax] = figure.axes
    assert ax.get_lines() == [] and [t.get_text() for t in ax.texts] == ["no finished epoch yet"]
    # Nothing coloured: axes, text and grid only.
    image = pixels(response.content)
    assert (image.max(axis=2) - image.min(axis=2) < 0.1).all()


def test_plot_of_an_unknown_job_and_bad_sizes(sqlite_client: TestClient) -> None:
    assert sqlite_client.get("/v1/jobs/nope/plot.png").status_code == 404
    job_id = make_job()
    response = sqlite_client.get(f"/v1/jobs/{job_id}/plot.png", params={"width": 10})
    assert response.status_code == 422
