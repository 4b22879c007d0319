"""packed trials: jobs.pack_id and sweeps.execution

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pack_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_jobs_pack_id", ["pack_id"], unique=False)

    # Sweeps created before packing existed ran their jobs separately.
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("execution", sa.String(length=16), server_default="separate", nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_column("execution")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_pack_id")
        batch_op.drop_column("pack_id")
