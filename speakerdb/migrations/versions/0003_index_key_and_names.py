"""Index cache authentication key; speaker names in Unicode NFC.

``store_state.index_key``: 32 random bytes (hex) keying the HMAC-SHA256 that authenticates
the vector-index cache file; every existing database gets its own key.

Names: speakerdb now stores names in NFC and looks them up in NFC. Existing names that are
not NFC are rewritten when their NFC form is free; when another speaker already has it
(two rows that looked identical), the row is left as it is and stays reachable by its exact
name (lookups try the exact name first). Names holding characters that are refused today
(controls, invisible format characters) are left alone: renaming them is the user's call.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import secrets
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(sa.Column("index_key", sa.String(64), nullable=True))
    bind = op.get_bind()
    bind.execute(
        sa.text("UPDATE store_state SET index_key = :key WHERE index_key IS NULL"),
        {"key": secrets.token_hex(32)},
    )
    with op.batch_alter_table("store_state") as batch:
        batch.alter_column("index_key", existing_type=sa.String(64), nullable=False)
    _names_to_nfc(bind)


def _names_to_nfc(bind: sa.engine.Connection) -> None:
    speakers = sa.table("speakers", sa.column("id", sa.Integer), sa.column("name", sa.String))
    rows = bind.execute(sa.select(speakers.c.id, speakers.c.name)).all()
    taken = {row.name for row in rows}
    for row in rows:
        target = unicodedata.normalize("NFC", row.name)
        if target == row.name or target in taken:
            continue
        bind.execute(speakers.update().where(speakers.c.id == row.id).values(name=target))
        taken.discard(row.name)
        taken.add(target)


def downgrade() -> None:
    # Names stay in NFC: the old code reads them as they are.
    with op.batch_alter_table("store_state") as batch:
        batch.drop_column("index_key")
