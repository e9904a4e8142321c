"""``store_state.keys_required``: once the first API key of the HTTP service is created, a
server on this database requires keys for good -- revoking every key does not open it again
(only ``speakerdb keys allow-keyless``, run by the database's owner, clears it).

Databases that hold a key when they are upgraded start with it set. One whose keys were
all revoked before this revision cannot be told apart from one that never had any: it
starts cleared, as it behaved before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(
            sa.Column("keys_required", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(
        sa.text(
            "UPDATE store_state SET keys_required = :yes WHERE EXISTS (SELECT 1 FROM api_keys)"
        ).bindparams(yes=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("store_state") as batch:
        batch.drop_column("keys_required")
