"""Initial schema: models, speakers, utterances, the change log and the store state.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("default_threshold", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", "weights_sha256", name="uq_models_name_weights_sha256"),
    )
    op.create_table(
        "store_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_store_state_model_id_models"),
        sa.PrimaryKeyConstraint("id", name="pk_store_state"),
    )
    # The single state row; instance_id tells index caches which database they belong to.
    state = sa.table(
        "store_state",
        sa.column("id", sa.Integer),
        sa.column("instance_id", sa.String),
        sa.column("change_seq", sa.BigInteger),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    op.bulk_insert(
        state,
        [
            {
                "id": 1,
                "instance_id": str(uuid.uuid4()),
                "change_seq": 0,
                "created_at": dt.datetime.now(dt.UTC),
            }
        ],
    )
    op.create_table(
        "speakers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("centroid", sa.LargeBinary(), nullable=False),
        sa.Column("utterance_count", sa.Integer(), nullable=False),
        sa.Column("speech_seconds", sa.Float(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_speakers"),
        sa.UniqueConstraint("name", name="uq_speakers_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "utterances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("speaker_id", sa.Integer(), nullable=False),
        sa.Column("audio_sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("speech_seconds", sa.Float(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_utterances_model_id_models"),
        sa.ForeignKeyConstraint(
            ["speaker_id"],
            ["speakers.id"],
            name="fk_utterances_speaker_id_speakers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_utterances"),
        sa.UniqueConstraint(
            "speaker_id", "audio_sha256", name="uq_utterances_speaker_id_audio_sha256"
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_utterances_speaker_id", "utterances", ["speaker_id"])
    op.create_table(
        "changes",
        sa.Column("speaker_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("speaker_id", name="pk_changes"),
    )
    op.create_index("ix_changes_seq", "changes", ["seq"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_changes_seq", table_name="changes")
    op.drop_table("changes")
    op.drop_index("ix_utterances_speaker_id", table_name="utterances")
    op.drop_table("utterances")
    op.drop_table("speakers")
    op.drop_table("store_state")
    op.drop_table("models")
