"""Alembic environment: the database URL comes from the settings object."""

from alembic import context
from sqlalchemy import pool

from models import Base
from models.session import get_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = get_engine(url)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # Batch operations recreate a table (copy, drop, rename); with foreign keys on,
            # dropping a parent table would cascade-delete its children's rows (e.g. users ->
            # api_tokens). The pragma only takes effect outside a transaction, so it comes first.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=sqlite)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")


_ = pool
if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
