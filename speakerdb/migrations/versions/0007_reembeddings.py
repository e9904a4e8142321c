"""Switching a database to another model (``speakerdb db reembed``): the ``reembeddings``
table holds each recording's vectors by models other than the database's own -- those made
so far for the model a re-embedding switches to, and the previous model's after a switch.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reembeddings",
        sa.Column("utterance_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("audio_sha256", sa.String(64), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["utterance_id"],
            ["utterances.id"],
            name=op.f("fk_reembeddings_utterance_id_utterances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_reembeddings_model_id_models")
        ),
        sa.PrimaryKeyConstraint("utterance_id", "model_id", name=op.f("pk_reembeddings")),
    )
    op.create_index(op.f("ix_reembeddings_model_id"), "reembeddings", ["model_id"])


def downgrade() -> None:
    # The vectors of other models go; the database keeps its own model's.
    op.drop_index(op.f("ix_reembeddings_model_id"), table_name="reembeddings")
    op.drop_table("reembeddings")
