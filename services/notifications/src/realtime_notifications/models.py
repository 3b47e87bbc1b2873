"""The database tables (SQLAlchemy Core): notifications, the outbox, idempotency keys, and
the per-user event numbering (`positions`: counters and the epoch, from realtime_shared).

The Alembic migrations in `migrations/versions` create exactly these; a test
compares them, so a change here without a migration fails CI.
"""

from __future__ import annotations

import sqlalchemy as sa

from realtime_shared.positions import Positions

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants 64 bits at 1M+ rows.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Moment = sa.DateTime(timezone=True)

notifications = sa.Table(
    "notifications",
    metadata,
    # Insertion order: "newest first" without trusting clock resolution for ties.
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),
    sa.Column("user_id", sa.String(255), nullable=False),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("title", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("action_url", sa.Text, nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("is_read", sa.Boolean, nullable=False),
    sa.Column("read_at", Moment, nullable=True),
    sa.Column("created_at", Moment, nullable=False),
    sa.Column("updated_at", Moment, nullable=False),
    # "A user's newest (unread) notifications" and "unread count" are index range scans.
    sa.Index(None, "user_id", "is_read", "seq"),
    sa.Index(None, "user_id", "seq"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    # Assigned at insert, inside the state change's transaction: the relay's per-user order.
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("user_id", sa.String(255), nullable=False),
    sa.Column("routing_key", sa.String(255), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created_at", Moment, nullable=False),
    sa.Column("sent_at", Moment, nullable=True),
    # The event's `meta.seq`: 1, 2, 3... per user, taken in the same transaction.
    sa.Column("seq", sa.BigInteger, nullable=False),
    # Pending rows are few and hot; a partial index keeps the relay's scans small.
    sa.Index(
        "ix_outbox_pending",
        "user_id",
        "id",
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    ),
    sa.Index(None, "sent_at"),
    # History requests ("alice's events after seq 41") are range scans; unique, so a
    # numbering fault fails the write instead of breaking every client's recovery.
    sa.Index(None, "user_id", "seq", unique=True),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("caller", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("response", sa.LargeBinary, nullable=False),
    sa.Column("created_at", Moment, nullable=False),
    sa.Index(None, "created_at"),
)

positions = Positions(metadata)
"""`stream_positions` (the last seq per user id) and `stream_epoch` (this database's epoch)."""
