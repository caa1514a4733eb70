"""The embedded broker (kombu's SQLAlchemy transport on its own SQLite file) keeps no row of
a message once it is delivered: its table holds only the messages still waiting."""

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from descent.queue import TRAIN_TASK, make_celery
from descent.settings import Settings


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
