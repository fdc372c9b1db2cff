"""Alembic environment: runs on the connection `bridge.store.database.upgrade` lends it.

`bridge db upgrade` and the SQLite auto-upgrade both come through there; with `alembic`'s own
command line, `sqlalchemy.url` names the database (a sync URL is fine for offline `--sql`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from bridge.store.schema import metadata

config = context.config


def run_online(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    lent = config.attributes.get("connection")
    if lent is not None:
        run_online(lent)
    else:
        engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.connect() as connection:
            run_online(connection)
        engine.dispose()
