"""The store: the per-boot ledger, and (later) its SQLite/PostgreSQL persistence."""
