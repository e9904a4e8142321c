"""Database-wide settings: a calibrated threshold of this database, and the index kind.

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
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(sa.Column("threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("threshold_note", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("index_kind", sa.String(16), nullable=False, server_default="auto")
        )


def downgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.drop_column("index_kind")
        batch.drop_column("threshold_note")
        batch.drop_column("threshold")
