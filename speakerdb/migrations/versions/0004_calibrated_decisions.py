"""Calibrated decisions: audio bandwidth of every recording and speaker, calibrations to
log-likelihood ratios with their operating point, and which calibration applies by default.

``utterances.bandwidth_hz`` / ``speakers.bandwidth_hz``: the quality measure calibration needs
besides speech duration (NULL for what was enrolled before: the audio is not stored, so it
cannot be measured now; such speakers are decided with the cosine rule).

``calibrations``: a row is now either a threshold on the score scale (kind "threshold", every
existing row) or a calibration to LLRs (kind "llr": the bundled one or the database's own
JSON, with an operating point and what it was fitted on); ``threshold`` becomes nullable.

``store_state.calibration_default``: "none" for every database that exists when this runs, so
it keeps deciding as before (cosine against its stored or the model's threshold) until its
owner opts in (``speakerdb calibrate --bundled`` or ``calibrate TRIALS``). A database created
from nothing is set to "bundled" by the runner (speakerdb.storage._migrate.upgrade).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("utterances") as batch:
        batch.add_column(sa.Column("bandwidth_hz", sa.Float(), nullable=True))
    with op.batch_alter_table("speakers") as batch:
        batch.add_column(sa.Column("bandwidth_hz", sa.Float(), nullable=True))
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(
            sa.Column("calibration_default", sa.String(16), nullable=False, server_default="none")
        )
    with op.batch_alter_table("calibrations") as batch:
        batch.alter_column("threshold", existing_type=sa.Float(), nullable=True)
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default="threshold")
        )
        batch.add_column(sa.Column("source", sa.String(16), nullable=True))
        batch.add_column(sa.Column("calibration", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("p_target", sa.Float(), nullable=True))
        batch.add_column(sa.Column("c_miss", sa.Float(), nullable=True))
        batch.add_column(sa.Column("c_fa", sa.Float(), nullable=True))
        batch.add_column(sa.Column("target_far", sa.Float(), nullable=True))
        batch.add_column(sa.Column("trials_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("target_trials", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("nontarget_trials", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Calibrations to LLRs mean nothing to older code: they go, thresholds stay.
    op.execute(sa.text("DELETE FROM calibrations WHERE kind <> 'threshold'"))
    with op.batch_alter_table("calibrations") as batch:
        for name in (
            "nontarget_trials",
            "target_trials",
            "trials_sha256",
            "target_far",
            "c_fa",
            "c_miss",
            "p_target",
            "calibration",
            "source",
            "kind",
        ):
            batch.drop_column(name)
        batch.alter_column("threshold", existing_type=sa.Float(), nullable=False)
    with op.batch_alter_table("store_state") as batch:
        batch.drop_column("calibration_default")
    with op.batch_alter_table("speakers") as batch:
        batch.drop_column("bandwidth_hz")
    with op.batch_alter_table("utterances") as batch:
        batch.drop_column("bandwidth_hz")
