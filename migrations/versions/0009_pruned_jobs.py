"""pruning: the pruned job status, a sweep's pruner, and what the pruner wrote about each job

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

``jobs.status`` may be ``pruned`` (an adaptive sweep's pruner stopped the job after an epoch; its
rows stay). ``sweeps.pruner`` is the pruner the workers ask (``service.search.pruners``), NULL for
sweeps without one; ``jobs.prune_attrs`` is what it wrote when asked about the job's trial
(successive halving's rung values), read back by the next decision in any worker.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("queued", "running", "succeeded", "failed", "diverged", "cancelled")
AFTER = (*BEFORE, "pruned")


def _status_check(statuses: Sequence[str]) -> str:
    return "status IN (" + ", ".join(f"'{status}'" for status in statuses) + ")"


def upgrade() -> None:
    """Upgrade schema."""
    json_type = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pruner", json_type, nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prune_attrs", json_type, nullable=True))
        batch_op.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_status"), _status_check(AFTER))


def downgrade() -> None:
    """Downgrade schema: pruned jobs become cancelled (both are stopped before their last epoch)."""
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'pruned'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_status"), _status_check(BEFORE))
        batch_op.drop_column("prune_attrs")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("pruner")
