"""the result cache: a succeeded run's cache key, and the run a cached job copies

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

``jobs.cache_key`` (SHA-256 of spec hash, torch version, device kind and optimlab version, see
``service/cache.py``) is written by the worker when a job succeeds; ``jobs.cached_from`` names the
job whose results a job served from the cache copies (SET NULL if that job is ever deleted).
Existing rows get neither: runs finished before this migration are simply never reused.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cache_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("cached_from", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_jobs_cached_from_jobs", "jobs", ["cached_from"], ["id"], ondelete="SET NULL")
        batch_op.create_index("ix_jobs_cache_key", ["cache_key", "owner", "status"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_cache_key")
        batch_op.drop_constraint("fk_jobs_cached_from_jobs", type_="foreignkey")
        batch_op.drop_column("cached_from")
        batch_op.drop_column("cache_key")
