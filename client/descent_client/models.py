"""What the API answers, as typed dicts (the JSON as it comes, typed for editors and mypy).

Each one mirrors a schema of the API's OpenAPI document, named in ``SCHEMAS``: a test of the
service (tests/descent/test_client_models.py) compares their fields, types and required keys
with ``/openapi.json``, so a field added to the API fails that test until it is added here.
"""

from typing import Any, Literal, NotRequired, TypedDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Best(TypedDict):
    epoch: int | None
    metric: str
    mode: str
    value: float | None
    checkpoint_id: str | None


class Last(TypedDict):
    epoch: int
    value: float | None


class Stop(TypedDict):
    """Why a job ended: ``reason`` (completed, early_stopping, pruned, ...), the rule, the
    epoch and a sentence."""

    reason: str
    rule: NotRequired[str | None]
    epoch: int
    detail: str
    failure: NotRequired[str | None]


class Job(TypedDict):
    id: str
    name: str | None
    status: JobStatus
    created_at: str
    started_at: str | None
    finished_at: str | None
    epoch: int
    best: Best
    last: Last
    stop: Stop | None
    error: str | None
    diagnosis: dict[str, Any] | None
    warnings: list[str]
    parameters: dict[str, int] | None
    cancel_requested: bool
    attempt: int
    runtime_seconds: float
    peak_memory_bytes: NotRequired[int | None]
    queue: str
    spec_hash: str
    spec: dict[str, Any]
    study_id: NotRequired[str | None]
    params: NotRequired[dict[str, Any] | None]


class Epoch(TypedDict):
    epoch: int
    metrics: dict[str, float | None]


class MetricsPage(TypedDict):
    items: list[Epoch]
    next: int
    complete: bool


class Checkpoint(TypedDict):
    id: str
    epoch: int
    value: float | None
    bytes: int
    sha256: str
    is_best: bool
    is_last: bool
    created_at: str


class Upload(TypedDict):
    id: str
    kind: Literal["dataset", "weights"]
    name: str | None
    filename: str | None
    format: str
    bytes: int
    sha256: str
    info: dict[str, Any]
    created_at: str


class Parity(TypedDict):
    max_abs_diff: float | None
    tolerance: float
    samples: int


class Export(TypedDict):
    id: str
    checkpoint_id: str
    job_id: str
    format: Literal["onnx", "torchscript"]
    status: Literal["queued", "running", "succeeded", "failed"]
    parity: Parity | None
    error: str | None
    bytes: int | None
    sha256: str | None
    created_at: str
    finished_at: str | None


class Trial(TypedDict):
    number: int
    job_id: str
    status: Literal["queued", "running", "succeeded", "pruned", "failed", "cancelled"]
    params: dict[str, Any]
    value: float | None
    epoch: int | None
    epochs: int
    checkpoint_id: str | None
    stop: dict[str, Any] | None
    created_at: str


class TrialCounts(TypedDict):
    total: int
    queued: NotRequired[int]
    running: NotRequired[int]
    succeeded: NotRequired[int]
    pruned: NotRequired[int]
    failed: NotRequired[int]
    cancelled: NotRequired[int]


class StudyEpochs(TypedDict):
    trained: int
    without_pruning: int
    saved: int


class Study(TypedDict):
    id: str
    name: str | None
    status: Literal["running", "completed", "cancelled"]
    created_at: str
    finished_at: str | None
    algorithm: str
    objective: dict[str, Any]
    max_trials: int
    parallelism: int
    seed: int
    pruner: dict[str, Any]
    grid_size: int | None
    trials: TrialCounts
    best: Trial | None
    epochs: StudyEpochs
    space: dict[str, Any]
    base: dict[str, Any]


class Importance(TypedDict):
    params: dict[str, float]
    trials: int
    evaluator: str


# Each model and the OpenAPI component it mirrors.
SCHEMAS: dict[type, str] = {
    Best: "BestPublic",
    Last: "LastPublic",
    Stop: "StopPublic",
    Job: "JobPublic",
    Epoch: "EpochMetrics",
    MetricsPage: "MetricsPage",
    Checkpoint: "CheckpointPublic",
    Upload: "UploadPublic",
    Parity: "Parity",
    Export: "ExportPublic",
    Trial: "TrialPublic",
    TrialCounts: "TrialCounts",
    StudyEpochs: "EpochsPublic",
    Study: "StudyPublic",
    Importance: "ImportancePublic",
}
