"""Tenants (domains): ``tenants`` and a ``tenant_id`` on speakers (names unique per tenant),
API keys, calibrations, opted-out names and audit entries (one hash chain per tenant,
``audit_head.id`` being the tenant's id); ``require_consent`` moves from ``store_state`` to
the tenant.

Everything already stored goes to the tenant ``default`` (id 1): its speakers, keys,
calibrations, settings and audit chain (entries keep their numbers and hashes, and the head
row 1 is now the default tenant's), so every database answers as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _tenant_column(primary_key: bool = False) -> sa.Column[int]:
    return sa.Column(
        "tenant_id",
        sa.Integer(),
        nullable=False,
        server_default="1",
        primary_key=primary_key,
        autoincrement=False,
    )


def _sqlite_counter(table: str) -> int | None:
    if op.get_bind().dialect.name != "sqlite":
        return None
    found = (
        op.get_bind()
        .execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = :t").bindparams(t=table))
        .scalar()
    )
    return None if found is None else int(found)


def _restore_sqlite_counter(table: str, counter: int | None) -> None:
    if counter is None:
        return
    bind = op.get_bind()
    bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t").bindparams(t=table))
    top = bind.execute(sa.text(f"SELECT COALESCE(MAX(id), 0) FROM {table}")).scalar_one()
    bind.execute(
        sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :seq)").bindparams(
            t=table, seq=max(counter, int(top))
        )
    )


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("require_consent", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    required = op.get_bind().execute(sa.text("SELECT require_consent FROM store_state")).scalar()
    op.bulk_insert(
        tenants,
        [
            {
                "id": 1,
                "name": "default",
                "created_at": dt.datetime.now(dt.UTC),
                "require_consent": bool(required),
            }
        ],
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SELECT setval('tenants_id_seq', 1)")
    with op.batch_alter_table("store_state") as batch:
        batch.drop_column("require_consent")

    # SQLite rebuilds the table here (with foreign keys off: see
    # speakerdb.storage._engine.migration_transaction); it must keep AUTOINCREMENT and its
    # counter, so that ids are never reused.
    counter = _sqlite_counter("speakers")
    with op.batch_alter_table("speakers", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(_tenant_column())
        batch.drop_constraint("uq_speakers_name", type_="unique")
        batch.create_unique_constraint(batch.f("uq_speakers_tenant_id_name"), ["tenant_id", "name"])
        batch.create_index(batch.f("ix_speakers_tenant_id"), ["tenant_id"])
        batch.create_foreign_key(
            batch.f("fk_speakers_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )
    _restore_sqlite_counter("speakers", counter)
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(_tenant_column())
        batch.drop_constraint("uq_api_keys_name", type_="unique")
        batch.create_unique_constraint(batch.f("uq_api_keys_tenant_id_name"), ["tenant_id", "name"])
        batch.create_foreign_key(
            batch.f("fk_api_keys_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )
    for table, key in (
        ("calibrations", "normalization"),
        ("audit_log", "seq"),
        ("opt_outs", "name_hmac"),
    ):
        with op.batch_alter_table(table) as batch:
            batch.add_column(_tenant_column())
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", ["tenant_id", key])
            batch.create_foreign_key(
                batch.f(f"fk_{table}_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
            )


def downgrade() -> None:
    for table, key in (
        ("opt_outs", "name_hmac"),
        ("audit_log", "seq"),
        ("calibrations", "normalization"),
    ):
        op.execute(sa.text(f"DELETE FROM {table} WHERE tenant_id <> 1"))
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_tenant_id_tenants", type_="foreignkey")
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", [key])
            batch.drop_column("tenant_id")
    op.execute(sa.text("DELETE FROM audit_head WHERE id <> 1"))
    op.execute(sa.text("DELETE FROM api_keys WHERE tenant_id <> 1"))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("fk_api_keys_tenant_id_tenants", type_="foreignkey")
        batch.drop_constraint("uq_api_keys_tenant_id_name", type_="unique")
        batch.create_unique_constraint("uq_api_keys_name", ["name"])
        batch.drop_column("tenant_id")
    # Other tenants' speakers go (foreign keys are off: their rows are deleted by hand);
    # run `speakerdb db rebuild-index` after a downgrade.
    others = "SELECT id FROM speakers WHERE tenant_id <> 1"
    op.execute(
        sa.text(
            "DELETE FROM reembeddings WHERE utterance_id IN "
            f"(SELECT id FROM utterances WHERE speaker_id IN ({others}))"
        )
    )
    op.execute(sa.text(f"DELETE FROM utterances WHERE speaker_id IN ({others})"))
    op.execute(sa.text(f"DELETE FROM changes WHERE speaker_id IN ({others})"))
    op.execute(sa.text("DELETE FROM speakers WHERE tenant_id <> 1"))
    counter = _sqlite_counter("speakers")
    with op.batch_alter_table("speakers", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("fk_speakers_tenant_id_tenants", type_="foreignkey")
        batch.drop_index("ix_speakers_tenant_id")
        batch.drop_constraint("uq_speakers_tenant_id_name", type_="unique")
        batch.create_unique_constraint("uq_speakers_name", ["name"])
        batch.drop_column("tenant_id")
    _restore_sqlite_counter("speakers", counter)
    required = (
        op.get_bind().execute(sa.text("SELECT require_consent FROM tenants WHERE id = 1")).scalar()
    )
    with op.batch_alter_table("store_state") as batch:
        batch.add_column(
            sa.Column("require_consent", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(
        sa.text("UPDATE store_state SET require_consent = :value").bindparams(value=bool(required))
    )
    op.drop_table("tenants")
