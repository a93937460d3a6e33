"""Alembic environment: migrations run in-process from `service.adapters.db.migrate`."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from service.adapters import tables  # noqa: F401  (every table must be imported here)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations() -> None:
    """Run against the engine handed in by db.migrate (or the URL for offline SQL)."""
    engine = config.attributes.get("engine")
    if engine is None:
        context.configure(url=config.get_main_option("sqlalchemy.url"),
                          target_metadata=target_metadata, literal_binds=True,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with engine.connect() as connection:
        # render_as_batch: SQLite has no real ALTER TABLE; batch mode copies and moves tables
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
