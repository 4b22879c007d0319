"""adaptive sweeps: a sweep's search strategy, space and budget, its controller's lease, its trials

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``sweeps`` gains what an adaptive search needs (strategy, space, budget, parallelism, objective,
sampler seed, the trials' tags and cache flag), the lease of the controller that creates its
trials (controller, lease_until) and when a cancel stopped it. ``sweep_trials`` holds each trial
the controller asked, keyed (sweep_id, number): the key that stops a trial being created twice.
``jobs.trial_number`` ties a job to its trial. Existing sweeps are grid or random sweeps: every new
column stays NULL for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    json_type = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("strategy", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("space", json_type, nullable=True))
        batch_op.add_column(sa.Column("budget", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("parallelism", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("objective", json_type, nullable=True))
        batch_op.add_column(sa.Column("sampler_seed", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tags", json_type, nullable=True))
        batch_op.add_column(sa.Column("cache", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("controller", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("search_stopped_at", sa.DateTime(), nullable=True))
    op.create_table(
        "sweep_trials",
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("params", json_type, nullable=False),
        sa.Column("system_attrs", json_type, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name="fk_sweep_trials_sweep_id_sweeps", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("sweep_id", "number", name="pk_sweep_trials"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch_op.create_index("ix_jobs_sweep_trial", ["sweep_id", "trial_number"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_sweep_trial")
        batch_op.drop_column("trial_number")
    op.drop_table("sweep_trials")
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        for column in ("search_stopped_at", "lease_until", "controller", "cache", "tags", "sampler_seed"):
            batch_op.drop_column(column)
        for column in ("objective", "parallelism", "budget", "space", "strategy"):
            batch_op.drop_column(column)
