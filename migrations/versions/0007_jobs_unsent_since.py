"""a queued job's task message not yet recorded as sent: jobs.unsent_since

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("unsent_since", sa.DateTime(timezone=True), nullable=True))
    # The jobs queued before this revision may be the ones a sender died before sending:
    # the sweeper sends each of them once more (a duplicate message runs a job once).
    jobs = sa.table(
        "jobs", sa.column("status", sa.String), sa.column("unsent_since", sa.DateTime(True))
    )
    op.execute(
        jobs.update().where(jobs.c.status == "queued").values(unsent_since=datetime.now(UTC))
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("unsent_since")
