"""Alembic environment: runs on the connection handed over by ``w2slab.grader.db.migrate``."""

from alembic import context
from sqlmodel import SQLModel

import w2slab.grader.db  # noqa: F401  (registers the tables on SQLModel.metadata)

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
