"""Database-wide settings: calibrated thresholds of this database, and the index kind.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("normalization", sa.String(16), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("normalization", name="pk_calibrations"),
    )
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(
            sa.Column("index_kind", sa.String(16), nullable=False, server_default="auto")
        )


def downgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.drop_column("index_kind")
    op.drop_table("calibrations")
