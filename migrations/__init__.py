"""The Alembic migrations, installed as a package (see descent/migrate.py)."""
