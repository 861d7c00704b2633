"""Alembic environment: runs on a connection handed over by parley.store.migrate.

Parley drives Alembic from its own code (``parley migrate`` and the node's
start-up), always passing an open synchronous connection facade in
``config.attributes["connection"]``; there is no alembic.ini to keep in step.
"""

from __future__ import annotations

from alembic import context

from parley.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `parley migrate`, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
