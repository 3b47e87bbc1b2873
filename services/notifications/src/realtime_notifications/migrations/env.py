"""Alembic environment: runs on the connection handed over by `realtime_notifications.db`."""

from __future__ import annotations

from alembic import context

from realtime_notifications.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `notifications-service migrate`")

# render_as_batch: SQLite cannot ALTER most things; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
