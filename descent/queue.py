"""The Celery application shared by the API (which only sends tasks, by name) and the
workers (which register them in ``worker.tasks``). Importing this module never imports torch."""

from celery import Celery
from kombu import Queue
from kombu.transport import TRANSPORT_ALIASES

from descent.settings import Settings, get_settings

TRAIN_TASK = "training.run"
# Makes a study's first trials (the API sends it when a study is created).
STUDY_TASK = "study.top_up"
# Exports a checkpoint's model to ONNX or TorchScript (the API sends it with an export's id).
EXPORT_TASK = "export.run"
# Posts a job's pending webhook deliveries in order (sent after an event is recorded).
WEBHOOK_TASK = "webhooks.deliver"

# ``sqla+…`` URLs use kombu's SQLAlchemy transport with a settable polling interval.
TRANSPORT_ALIASES["sqla"] = "descent.broker:Transport"


def training_queue(device: str, settings: Settings) -> str:
    """The queue of a job (or a study's trials) on ``training.device``:

    - ``cuda``: the gpu queue, always (a deployment without GPU workers leaves it waiting
      there, or, on the embedded worker that also reads the gpu queue, fails it with the
      reason);
    - ``auto``: the gpu queue when the deployment runs GPU workers (``gpu_workers``), else
      the cpu queue, where it trains on the CPU;
    - ``cpu``: the cpu queue.
    """
    if device == "cuda" or (device == "auto" and settings.gpu_workers):
        return settings.gpu_queue
    return settings.cpu_queue


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    transport_options: dict[str, object] = {}
    if settings.embedded_broker:
        transport_options["polling_interval"] = settings.broker_polling_interval
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    else:
        transport_options["visibility_timeout"] = settings.broker_visibility_timeout
        # A worker takes from its queues in the order given (`--queues gpu,cpu`: cpu jobs
        # only while no gpu job waits), not in turn.
        transport_options["queue_order_strategy"] = "priority"
        if settings.broker_key_prefix:
            transport_options["global_keyprefix"] = settings.broker_key_prefix
    app = Celery("descent", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_queues=[Queue(settings.cpu_queue), Queue(settings.gpu_queue)],
        task_default_queue=settings.cpu_queue,
        # A typo in a queue name must fail, not create a queue no worker reads.
        task_create_missing_queues=False,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # The database is the source of truth for a job; the broker only carries its id.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # A training task is acknowledged only when it ends, and given back if its
        # worker dies, so another worker can resume the job from its last checkpoint.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )
    return app
