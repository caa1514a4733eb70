"""Wire shape of a metrics page (documentation only: the route writes its JSON directly)."""

from pydantic import BaseModel, Field


class EpochMetrics(BaseModel):
    epoch: int
    metrics: dict[str, float | None] = Field(
        description="Every per-epoch metric by name; NaN or infinite values are null.",
        examples=[{"train_loss": 0.41, "val_loss": 0.38, "val_accuracy": 0.91, "lr": 0.001}],
    )


class MetricsPage(BaseModel):
    items: list[EpochMetrics]
    next: int = Field(
        description="The cursor to continue from: pass it as `after` for the epochs after "
        "this page. The last epoch returned, or `after` when the page is empty."
    )
    complete: bool = Field(
        description="True once the job has ended and this page holds its last epoch: "
        "nothing will follow."
    )
