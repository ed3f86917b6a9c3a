"""The store: per-boot ledgers and events in SQLite or PostgreSQL.

:mod:`.schema` and the Alembic migrations define the tables; :mod:`.db` opens them;
:mod:`.ingest` turns a capture into rows (idempotent by content); :mod:`.queries` and
:mod:`.compare` read them back; :mod:`.trust` decides what a spool writer may claim.
"""
