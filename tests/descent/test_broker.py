"""The embedded broker (kombu's SQLAlchemy transport on its own SQLite file) keeps no row of
a message once it is delivered: its table holds only the messages still waiting. A consumer
takes a message its own process sends at once, not at its next poll."""

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from kombu import Consumer

from descent.queue import TRAIN_TASK, make_celery
from descent.settings import Settings
from tests.timing import scaled


def message_rows(settings: Settings) -> list[tuple[int, bool]]:
    path = settings.broker_url.removeprefix("sqla+sqlite:///")
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT id, visible FROM kombu_message").fetchall()
    return [(id_, bool(visible)) for id_, visible in rows]


def test_delivered_messages_leave_the_broker_table(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = configure(DESCENT_DATA_DIR=str(tmp_path / "data"))
    assert settings.embedded_broker
    app = make_celery(settings)
    try:
        for i in range(5):
            app.send_task(TRAIN_TASK, args=[f"job{i}"], queue=settings.cpu_queue)
        assert len(message_rows(settings)) == 5
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            taken = [channel.basic_get(settings.cpu_queue) for _ in range(3)]
            for message in taken:
                if message is not None:
                    message.ack()
        # Three gets, three messages: the first three sent, in order.
        assert [m and m.payload[0][0] for m in taken] == ["job0", "job1", "job2"]
        # The two messages not yet delivered are kept, and only they.
        rows = message_rows(settings)
        assert len(rows) == 2 and all(visible for _, visible in rows), rows
    finally:
        app.close()


def test_a_message_sent_by_the_consumers_own_process_ends_its_wait_between_polls(
    configure: Callable[..., Settings], tmp_path: Path
) -> None:
    # Polls a minute apart: only the wake-up can deliver the message within the drain below.
    settings = configure(
        DESCENT_DATA_DIR=str(tmp_path / "data"), DESCENT_BROKER_POLLING_INTERVAL="60"
    )
    app = make_celery(settings)
    received: list[tuple[Any, float]] = []
    sent_at: list[float] = []

    def on_message(body: Any, message: Any) -> None:
        received.append((body, time.monotonic()))
        message.ack()

    def send_later() -> None:
        time.sleep(0.3)  # the consumer has polled the empty queue and waits by then
        sent_at.append(time.monotonic())
        app.send_task(TRAIN_TASK, args=["job0"], queue=settings.cpu_queue)

    try:
        with app.connection_for_read() as connection:
            queue = app.amqp.queues[settings.cpu_queue]
            with Consumer(connection, queues=[queue], callbacks=[on_message], accept=["json"]):
                sender = threading.Thread(target=send_later)
                sender.start()
                # Without the wake-up, the poll after this wait (capped at the timeout) takes it.
                connection.drain_events(timeout=scaled(5))
                sender.join()
    finally:
        app.close()
    assert [body[0] for body, _ in received] == [["job0"]]
    assert received[0][1] - sent_at[0] < scaled(1)
