"""Versioned schema migrations: ``NNNN_description.sql`` files applied in order by :mod:`bot.migrations.migrate`."""

from bot.migrations.migrate import Migration, MigrationError, MigrationResult, SchemaTooNew, load_migrations, migrate

__all__ = ["Migration", "MigrationError", "MigrationResult", "SchemaTooNew", "load_migrations", "migrate"]
