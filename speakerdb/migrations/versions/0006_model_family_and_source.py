"""Bring-your-own models: the family of a database's model, where it was last loaded from,
and where its default threshold comes from.

``models.family``: "ge2e", "nemo", "speechbrain" or "onnx". Every model recorded before this
revision is the bundled GE2E (the only model there was), hence the server default.
``models.source``: the file or folder a bring-your-own model was last loaded from with these
weights (NULL for a built-in model): commands on the database load it from there.
``models.threshold_note``: the origin of ``default_threshold`` (e.g. the original toolkit's
default converted to a cosine); NULL for rows written before, whose threshold is GE2E's.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("family", sa.String(32), nullable=False, server_default="ge2e"))
        batch.add_column(sa.Column("source", sa.Text(), nullable=True))
        batch.add_column(sa.Column("threshold_note", sa.Text(), nullable=True))


def downgrade() -> None:
    # Older code knows only GE2E: a database holding another family's vectors cannot go back.
    others = op.get_bind().execute(sa.text("SELECT count(*) FROM models WHERE family <> 'ge2e'"))
    if others.scalar_one():
        raise RuntimeError(
            "this database records a bring-your-own model, which revision 0005 cannot hold"
        )
    with op.batch_alter_table("models") as batch:
        batch.drop_column("threshold_note")
        batch.drop_column("source")
        batch.drop_column("family")
