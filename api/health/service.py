"""Health: can the service reach its database?"""

from sqlalchemy import text
from sqlalchemy.orm import Session


def check_database(session: Session) -> None:
    """One cheap round trip; raises the driver's OperationalError when the database is down."""
    session.execute(text("SELECT 1"))
