"""Alembic environment: the node passes its own connection in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from appliance.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the node runs migrations
    raise RuntimeError("rtnode migrations run through appliance.db.migrate()")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
