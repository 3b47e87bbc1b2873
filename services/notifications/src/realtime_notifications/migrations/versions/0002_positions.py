"""Number events per user: `outbox.seq`, the counters and the epoch.

Rows already in the outbox are numbered 1, 2, 3... per user in id (commit) order,
and the counters start after them; events still pending get `meta.seq` and
`meta.epoch` in their bodies too, so everything published from now on carries
them. The epoch is new: no client can hold a position from before.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import secrets

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

REWRITE_BATCH = 1_000
"""Pending bodies read and rewritten per round trip."""


def upgrade() -> None:
    op.create_table(
        "stream_positions",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_stream_positions"),
    )
    op.create_table(
        "stream_epoch",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("epoch", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stream_epoch"),
    )
    epoch = secrets.token_hex(8)
    conn = op.get_bind()
    conn.execute(
        sa.text("INSERT INTO stream_epoch (id, epoch) VALUES (1, :epoch)"), {"epoch": epoch}
    )

    op.add_column("outbox", sa.Column("seq", sa.BigInteger, nullable=True))
    conn.execute(
        sa.text(
            "UPDATE outbox SET seq = numbered.n FROM (SELECT id, row_number() OVER "
            "(PARTITION BY user_id ORDER BY id) AS n FROM outbox) AS numbered "
            "WHERE outbox.id = numbered.id"
        )
    )
    conn.execute(
        sa.text(
            "INSERT INTO stream_positions (key, seq) "
            "SELECT user_id, max(seq) FROM outbox GROUP BY user_id"
        )
    )
    _stamp_pending(conn, epoch)
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger, nullable=False)
    op.create_index("ix_outbox_user_id_seq", "outbox", ["user_id", "seq"], unique=True)


def _stamp_pending(conn: sa.Connection, epoch: str) -> None:
    """Put `meta.seq` and `meta.epoch` into the bodies of events not yet published."""
    select = sa.text(
        "SELECT id, seq, body FROM outbox WHERE sent_at IS NULL AND id > :after "
        "ORDER BY id LIMIT :limit"
    ).bindparams(sa.bindparam("limit", REWRITE_BATCH))
    update = sa.text("UPDATE outbox SET body = :body WHERE id = :id").bindparams(
        sa.bindparam("body", type_=sa.LargeBinary)
    )
    after = 0
    while rows := conn.execute(select, {"after": after}).all():
        stamped = []
        for row_id, seq, body in rows:
            envelope = orjson.loads(body)
            envelope.setdefault("meta", {}).update(seq=seq, epoch=epoch)
            stamped.append({"id": row_id, "body": orjson.dumps(envelope)})
        conn.execute(update, stamped)
        after = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_outbox_user_id_seq", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("seq")
    op.drop_table("stream_epoch")
    op.drop_table("stream_positions")
