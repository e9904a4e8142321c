"""Watchlists: ``watchlist``, the voices of known fraudsters of each tenant, scored with
every verify and identify of the tenant. Every database starts with empty watchlists, so
it answers as before.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watchlist",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("centroid", sa.LargeBinary(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("utterance_count", sa.Integer(), nullable=False),
        sa.Column("speech_seconds", sa.Float(), nullable=False),
        sa.Column("bandwidth_hz", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_watchlist_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_watchlist_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_watchlist")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_watchlist_tenant_id_name")),
    )


def downgrade() -> None:
    op.drop_table("watchlist")
