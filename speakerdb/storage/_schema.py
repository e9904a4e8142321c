"""SQL schema (SQLAlchemy 2.0 typed ORM). SQL is the only source of truth of a database.

Tables:
  models        the embedding model whose vectors the database holds (name, weights hash, dim,
                default threshold, family, and the path a bring-your-own model was last
                loaded from)
  speakers      one row per enrolled identity, with its centroid (normalised mean voiceprint)
  utterances    every enrolled recording's embedding, as float32 bytes
  changes       the change log the vector-index caches catch up from: one row per speaker id
                holding the sequence number of its latest centroid upsert or delete
  store_state   a single row: database identity, the change counter, the model in use, the
                index kind, the key that authenticates index cache files, which
                calibration applies where none is set (``calibration_default``), and
                whether the HTTP service requires API keys (``keys_required``)
  calibrations  how this database decides, per score normalisation: a threshold on the score
                scale chosen on its own trials, or a calibration to log-likelihood ratios
                (the bundled one or one fitted on its own trials) with an operating point
  reembeddings  vectors of the same recordings by models other than the database's own:
                those a ``db reembed`` has made so far for the model it switches to, and
                the previous model's after a switch (kept until ``--drop-old``)
  api_keys      keys of the HTTP service (``speakerdb serve``): only their sha256, never the
                key itself, with their scopes
  audit_log     the append-only, hash-chained record of who enrolled, looked up, renamed or
                deleted whom, and of key and calibration changes (see storage._audit)
  opt_outs      keyed hashes of the names whose owners opted out (never the name or voice)
  audit_head    one row per tenant (``id`` = the tenant's id): the sequence number and hash
                of the last entry of that tenant's audit chain, locked by every append so that
                concurrent writers never fork the chain
  tenants       the partitions of a database (domains): every speaker, API key, calibration,
                opted-out name, watchlist entry and audit entry belongs to one; ``default``
                (id 1) holds everything of a database from before revision 0012
  watchlist     voices of known fraudsters, per tenant: every verify and identify of the
                tenant is scored against them too (never part of the index: they are no
                one's identification answer)

The migrations in ``speakerdb/migrations`` must build exactly this schema; a test compares
them with Alembic's autogenerate comparison.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "SPOOF_CALIBRATION_KEY",
    "ApiKey",
    "AuditEntryRow",
    "AuditHead",
    "Base",
    "Calibration",
    "Change",
    "ModelRow",
    "OptOut",
    "Reembedding",
    "Speaker",
    "StoreState",
    "Tenant",
    "Utterance",
    "WatchlistEntry",
    "utcnow",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ModelRow(Base):
    """An embedding model, as recorded with the vectors it made."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "weights_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    dimension: Mapped[int] = mapped_column(Integer)
    default_threshold: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # "ge2e", "nemo", "speechbrain" or "onnx"; rows from before revision 0006 are all GE2E.
    family: Mapped[str] = mapped_column(String(32), default="ge2e", server_default="ge2e")
    # Where a bring-your-own model was last loaded from with these weights (NULL: built in).
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Where default_threshold comes from (NULL before revision 0006: GE2E's own).
    threshold_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class StoreState(Base):
    """The single row (id 1) describing the database as a whole."""

    __tablename__ = "store_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Distinguishes this database from any other, so an index cache is never applied to a
    # database it was not built from (a restored backup, a dropped and recreated schema).
    instance_id: Mapped[str] = mapped_column(String(36))
    change_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Vector-index kind: "auto" (chosen by size), or a forced "flat" / "ivf" / "ivfsq".
    index_kind: Mapped[str] = mapped_column(String(16), default="auto", server_default="auto")
    # 32 random bytes (hex): the HMAC key of the index cache files. Only a holder of the
    # database can write a file the store will use; anything else is rebuilt from SQL.
    index_key: Mapped[str] = mapped_column(String(64))
    # Which calibration applies to a normalisation without a ``calibrations`` row: "bundled"
    # (the model's own, at the default operating point) for databases created since revision
    # 0004 or opted in; "none" (cosine score against the model's threshold) for databases
    # created before, which keep deciding as they did until their owner opts in; "auto"
    # (``calibrate --from-enrollments --auto``): the bundled one until the database has enough
    # enrollments to self-calibrate, then its own, re-fitted as they change.
    calibration_default: Mapped[str] = mapped_column(
        String(16), default="none", server_default="none"
    )
    # Set in the transaction that creates the first API key and never cleared by revoking
    # keys: a server on this database then requires a key even when none is left (only
    # ``speakerdb keys allow-keyless`` clears it, and only while no key exists).
    keys_required: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The spoofing countermeasure verify runs on every probe (revision 0009): family, variant,
    # weights sha256 and the file it was last loaded from; all NULL when there is none.
    spoof_family: Mapped[str | None] = mapped_column(String(32), nullable=True)
    spoof_variant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    spoof_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    spoof_source: Mapped[str | None] = mapped_column(Text, nullable=True)
    # 32 random bytes (hex): the HMAC key of opted-out names (``opt_outs``), so that the
    # table alone does not say which names were opted out (a dictionary of names cannot be
    # hashed without it).
    name_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


SPOOF_CALIBRATION_KEY = "spoof"
"""The ``calibrations`` row (kind "spoof") holding the spoof calibration fitted by
``speakerdb spoof calibrate``: it belongs to the countermeasure, not to the speaker model."""


class Tenant(Base):
    """A tenant (domain): a partition of the database that an API key can never leave. Its
    speakers' names are unique within it only. Revision 0012 created ``default`` (id 1) and
    moved everything there; the others are created by their first write."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Every enrollment of a new speaker must record consent (``db set require-consent on``).
    require_consent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A new speaker enrolled without an expiry gets now + this period (revision 0014;
    # ``db set default-expires-after 3y``); None: no default.
    default_retention: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Calibration(Base):
    """How this database decides for one score normalisation ("none" for raw cosine scores,
    "asnorm").

    kind "threshold": accept iff the score (cosine, or AS-norm z-score) >= ``threshold``,
    chosen on this database's own trials (``speakerdb calibrate --rule score``; every row
    written before revision 0004 is of this kind). kind "llr": ``threshold``, if set, is
    kept from before for the answers the calibration cannot take; the score and quality
    measures are mapped to a log-likelihood ratio by a calibration -- ``source`` "bundled"
    (the model's shipped calibration), "database" (``calibration`` holds one fitted on this
    database's trials: the ``speakerdb-calibration/1`` JSON, which also records its fit) or
    "self" (fitted on its own enrollments; the JSON also holds, under "enrollments", the counts
    of what it saw, for auto re-fitting) --
    and accepted iff the LLR reaches the operating point's threshold: the Bayes threshold of
    ``p_target`` / ``c_miss`` / ``c_fa``, or, when ``target_far`` is set, the LLR at which
    that share of the calibration's impostor trials was accepted. ``trials_sha256`` and the
    trial counts repeat the fit's, for queries.
    """

    __tablename__ = "calibrations"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id"), primary_key=True, server_default="1"
    )
    normalization: Mapped[str] = mapped_column(String(16), primary_key=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), default="threshold", server_default="threshold")
    source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    p_target: Mapped[float | None] = mapped_column(Float, nullable=True)
    c_miss: Mapped[float | None] = mapped_column(Float, nullable=True)
    c_fa: Mapped[float | None] = mapped_column(Float, nullable=True)
    target_far: Mapped[float | None] = mapped_column(Float, nullable=True)
    trials_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_trials: Mapped[int | None] = mapped_column(Integer, nullable=True)
    nontarget_trials: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Speaker(Base):
    """An enrolled identity. ``centroid`` is the unit-norm mean of its utterance embeddings
    (float32 bytes), kept in step with them in the same transaction."""

    __tablename__ = "speakers"
    # Ids are never reused after a delete; names are unique within a tenant.
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True, server_default="1")
    name: Mapped[str] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    centroid: Mapped[bytes] = mapped_column(LargeBinary)
    utterance_count: Mapped[int] = mapped_column(Integer)
    speech_seconds: Mapped[float] = mapped_column(Float)
    # Speech-weighted mean of the recordings' bandwidths (Hz), the enrollment side's channel
    # for calibration; NULL when any recording's is unknown (enrolled before revision 0004).
    bandwidth_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    change_seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Retention: ``speakerdb db expire`` erases the speaker from this time on (NULL: never).
    expires_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    # Consent as recorded at enrollment: its text, when, and who enrolled (key or OS user).
    consent: Mapped[str | None] = mapped_column(Text, nullable=True)
    consent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    consent_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Utterance(Base):
    """One enrolled recording: its decoded-audio hash, where it came from, its embedding."""

    __tablename__ = "utterances"
    __table_args__ = (
        UniqueConstraint("speaker_id", "audio_sha256"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    speaker_id: Mapped[int] = mapped_column(
        ForeignKey("speakers.id", ondelete="CASCADE"), index=True
    )
    audio_sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration: Mapped[float] = mapped_column(Float)
    speech_seconds: Mapped[float] = mapped_column(Float)
    # Audio bandwidth (Hz, speakerdb._quality); NULL for recordings enrolled before 0004.
    bandwidth_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Reembedding(Base):
    """An utterance's embedding by a model that is not (or no longer) the database's.

    ``db reembed --model NEW`` fills these for NEW in committed batches (so that a killed
    run resumes where it stopped) and, when it switches, swaps them with the vectors in
    ``utterances``: the previous model's vectors land here, so switching back needs no
    re-embedding. ``audio_sha256`` is the recording's digest as that model's audio pipeline
    decodes it (each family resamples its own way), which becomes ``utterances.audio_sha256``
    when the database switches to the model. Rows go with their utterance (cascade).
    """

    __tablename__ = "reembeddings"

    utterance_id: Mapped[int] = mapped_column(
        ForeignKey("utterances.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True, index=True)
    audio_sha256: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Change(Base):
    """Latest centroid change of each speaker id ("upsert" or "delete"), by sequence number.

    Only the latest change per speaker is kept: a cache that applied everything up to N
    finds every speaker changed since in ``seq > N``.
    """

    __tablename__ = "changes"
    __table_args__ = (Index(None, "seq", unique=True),)

    speaker_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    op: Mapped[str] = mapped_column(String(8))


class ApiKey(Base):
    """An API key of the HTTP service. Only the sha256 of the key is stored: the key itself
    is shown once, when it is created. ``prefix`` (its first characters, not secret enough to
    matter) lets a person tell keys apart; ``scopes`` is a space-separated list."""

    __tablename__ = "api_keys"
    # Key names are unique within a tenant (a tenant cannot learn another's key names).
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # The one tenant the key acts in (it can never reach another's speakers).
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), server_default="1")
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEntryRow(Base):
    """One audit entry. ``seq`` numbers the entries 1, 2, ... in chain order; ``hash`` is
    sha256(``prev_hash`` || canonical JSON of the entry's other fields) (see
    :mod:`speakerdb.storage._audit`). Never audio, embeddings, paths or key secrets."""

    __tablename__ = "audit_log"

    # Each tenant has its own chain, numbered from 1 (revision 0012: every earlier entry is
    # the default tenant's).
    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id"), primary_key=True, autoincrement=False, server_default="1"
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    speaker: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    decision: Mapped[str | None] = mapped_column(String(32), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Canonical JSON of small facts (a new name, a key's scopes, a normalisation), or NULL.
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row per tenant (``id`` is the tenant's id): the last entry of its chain, ``seq``
    and ``hash`` (0 and 64 zeros for an empty log). Every append locks it, and ``audit
    verify`` checks the log ends there (a deleted last entry would otherwise leave a
    consistent chain)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class OptOut(Base):
    """A name whose owner opted out: only HMAC-SHA256(``store_state.name_key``, the name
    normalised and case-folded), never the name or the voice. Enrolling the name is refused
    while the row exists."""

    __tablename__ = "opt_outs"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id"), primary_key=True, autoincrement=False, server_default="1"
    )
    name_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WatchlistEntry(Base):
    """A known fraudster's voice in a tenant's watchlist: its voiceprint (the unit-norm mean
    of its recordings' embeddings, float32 bytes, of model ``model_id``) and the quality
    measures calibration reads, like a speaker's. Never in the vector index."""

    __tablename__ = "watchlist"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(255))
    centroid: Mapped[bytes] = mapped_column(LargeBinary)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    utterance_count: Mapped[int] = mapped_column(Integer)
    speech_seconds: Mapped[float] = mapped_column(Float)
    bandwidth_hz: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
