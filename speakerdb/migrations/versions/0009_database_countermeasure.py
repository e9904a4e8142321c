"""A database records its spoofing countermeasure (issue 19): ``store_state.spoof_family``
("aasist"), ``spoof_variant`` ("AASIST", "AASIST-L"), ``spoof_sha256`` (the weights' sha256)
and ``spoof_source`` (the file it was last loaded from). All NULL: no countermeasure, as every
database before this revision.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(sa.Column("spoof_family", sa.String(32), nullable=True))
        batch.add_column(sa.Column("spoof_variant", sa.String(64), nullable=True))
        batch.add_column(sa.Column("spoof_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("spoof_source", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.drop_column("spoof_source")
        batch.drop_column("spoof_sha256")
        batch.drop_column("spoof_variant")
        batch.drop_column("spoof_family")
