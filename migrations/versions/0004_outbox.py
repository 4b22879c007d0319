"""the outbox: an index on (status, enqueued_at) for the dispatcher's "queued and not yet sent"

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Queued jobs with a NULL ``enqueued_at`` were already the ones whose message never reached the
broker; from now on every job is created that way and the dispatcher sends it, so no data moves.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status_enqueued", ["status", "enqueued_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_enqueued")
