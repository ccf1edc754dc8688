"""Alembic environment: migrations run on the app's database, one transaction per
migration, so a migration that fails leaves the ones before it applied (a half-applied
upgrade: shipfab restores the snapshot it took just before)."""

from logging.config import fileConfig

from alembic import context
from db import engine

if context.config.config_file_name:
    fileConfig(context.config.config_file_name)

with engine.connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
