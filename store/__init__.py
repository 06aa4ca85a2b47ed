"""The store: every table (models.py), the states rows hold (states.py), the engine, sessions and
migrations (db.py, migrations/), and repository functions per subject (cases, journal, processed,
outbox, directory, blobs, ...), each taking keyword-only arguments and an explicit session and never
committing: the caller owns the transaction. text.py keeps what a backend cannot store out of every
row. It imports SQLAlchemy/SQLModel/Alembic and nothing from gateway/.
"""
