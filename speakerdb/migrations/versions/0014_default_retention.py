"""``tenants.default_retention``: a tenant's default retention period ("3y", "90d" ...),
set with ``speakerdb db set default-expires-after``: a new speaker enrolled without
``--expires-after`` gets that expiry. Every tenant starts without one, so every database
answers as before.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("default_retention", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("default_retention")
