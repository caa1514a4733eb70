"""Persistence: SQLAlchemy models, sessions and the artifact store. No torch, no web."""
