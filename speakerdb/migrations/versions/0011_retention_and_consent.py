"""Retention and consent: ``speakers.expires_at`` and the consent recorded at enrollment
(``consent``, ``consent_at``, ``consent_by``); ``store_state.require_consent`` and
``name_key`` (a random HMAC key, made here for every database); ``opt_outs`` (keyed hashes
of opted-out names).

Existing speakers never expire and have no recorded consent; nothing requires consent
until the owner says so: every database answers as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("speakers") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("consent", sa.Text(), nullable=True))
        batch.add_column(sa.Column("consent_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("consent_by", sa.String(length=128), nullable=True))
        batch.create_index(batch.f("ix_speakers_expires_at"), ["expires_at"])
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(
            sa.Column("require_consent", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("name_key", sa.String(length=64), nullable=True))
    op.execute(
        sa.text("UPDATE store_state SET name_key = :key").bindparams(key=secrets.token_hex(32))
    )
    op.create_table(
        "opt_outs",
        sa.Column("name_hmac", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name_hmac", name=op.f("pk_opt_outs")),
    )


def downgrade() -> None:
    op.drop_table("opt_outs")
    with op.batch_alter_table("store_state") as batch:
        batch.drop_column("name_key")
        batch.drop_column("require_consent")
    with op.batch_alter_table("speakers") as batch:
        batch.drop_index(batch.f("ix_speakers_expires_at"))
        batch.drop_column("consent_by")
        batch.drop_column("consent_at")
        batch.drop_column("consent")
        batch.drop_column("expires_at")
