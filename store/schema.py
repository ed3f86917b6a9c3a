"""The store's tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them.

A boot is keyed by (machine id, boot id). It points at the one raw capture it was last
computed from (the capture file's bytes, already gzip-compressed, with their sha256), and
owns its events and its ledger. The ledger's headline figures are columns, so fleet
queries and ``compare`` do not parse JSON; the whole ledger is kept as its JSON document,
in a table of its own.
Unknown figures are NULL, never 0.
"""

from __future__ import annotations

from memledger.tracer.caps import KSYM_NAME_LEN, PRINTK_RECORD_MAX, SYSFS_ATTR_MAX
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = ("boots", "captures", "events", "hosts", "ledger_documents", "ledgers", "metadata",
           "runtime_batches", "runtime_events")

# Named constraints, so that Alembic's batch mode can find them again on SQLite.
metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (and so autoincrementing).
Id = BigInteger().with_variant(Integer(), "sqlite")

hosts = Table(
    "hosts", metadata,
    Column("id", Id, primary_key=True),
    Column("machine_id", String(32), nullable=False),
    Column("hostname", String(255)),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    # Who sent the host's captures to a fleet daemon ("certificate:CN", "user:NAME"), and a
    # digest of its DMI product UUID and serial; '' when not known (migration 0007). Clones
    # of one image share a machine id and differ in one of these.
    Column("sender", String(255), nullable=False, server_default=""),
    Column("hardware", String(64), nullable=False, server_default=""),
    UniqueConstraint("machine_id", "sender", "hardware"),
)

captures = Table(
    "captures", metadata,
    Column("id", Id, primary_key=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("format_version", Integer, nullable=False),
    Column("memledger_version", String(64), nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    # /proc/uptime at the capture (None before 0005, or not read): orders a boot's captures.
    Column("uptime_s", Float),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Column("origin", Text),  # the spool file name, "self", or the path given to ingest
    Column("data", LargeBinary, nullable=False),
)

boots = Table(
    "boots", metadata,
    Column("id", Id, primary_key=True),
    Column("host_id", ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("boot_id", String(36), nullable=False),
    Column("capture_id", ForeignKey("captures.id"), unique=True),
    Column("captured_at", DateTime(timezone=True)),
    Column("ingested_at", DateTime(timezone=True)),
    Column("kernel_release", String(255)),
    Column("cmdline", Text),
    Column("efi", Boolean),
    # Whether the boot can measure each figure (ledger/measures.py), from its ledger.
    Column("efi_debug", Boolean),
    Column("kexec", Boolean),
    Column("log_complete", Boolean),
    # DMI strings, each up to a sysfs page (migration 0005); firmware_vendor is one name
    # per vendor (ledger/vendors.py).
    Column("firmware_vendor", String(SYSFS_ATTR_MAX)),
    Column("firmware_version", String(SYSFS_ATTR_MAX)),
    Column("product", String(SYSFS_ATTR_MAX)),
    Column("fidelity", JSON),
    UniqueConstraint("host_id", "boot_id"),
    # What compare reads of a boot besides its ledger, so that PostgreSQL reads the index
    # alone (migration 0008; SQLite has no INCLUDE).
    Index("ix_boots_kernel_release", "kernel_release",
          postgresql_include=["id", "host_id", "efi", "efi_debug", "kexec", "log_complete",
                              "captured_at"]),
    Index("ix_boots_captured_at", "captured_at"),
)

ledgers = Table(
    "ledgers", metadata,
    Column("boot_pk", ForeignKey("boots.id", ondelete="CASCADE"), primary_key=True),
    Column("schema_version", Integer, nullable=False),
    Column("computed_with", String(64), nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    Column("bs_total_bytes", BigInteger),
    Column("bs_reclaimed_bytes", BigInteger),
    Column("bs_kept_bytes", BigInteger),
    Column("bs_leaked_bytes", BigInteger),
    Column("low_usable_bytes", BigInteger),
    Column("low_reserved_bytes", BigInteger),
    Column("low_boot_services_bytes", BigInteger),
    Column("low_freed_bytes", BigInteger),
    Column("anomaly_count", Integer, nullable=False),
    Column("anomaly_codes", Text),  # the distinct codes, sorted, space-separated
    Column("memory_bytes", BigInteger),  # Σ zone present pages: the RAM the kernel saw
)

# The whole ledger document, beside its headline columns: SQLite stores a row whole, and a
# 4 KB document inline would make every scan of the headline figures read a page per boot
# (migration 0003).
ledger_documents = Table(
    "ledger_documents", metadata,
    Column("boot_pk", ForeignKey("boots.id", ondelete="CASCADE"), primary_key=True),
    Column("document", JSON, nullable=False),
)

events = Table(
    "events", metadata,
    Column("id", Id, primary_key=True),
    Column("boot_pk", ForeignKey("boots.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("source", String(16), nullable=False),
    Column("ts", Float),
    # A function and its caller are read from one kernel log or trace line (0005).
    Column("function", String(PRINTK_RECORD_MAX), nullable=False),
    Column("phys_start", BigInteger),
    Column("phys_end", BigInteger),
    Column("size", BigInteger),
    Column("caller", String(PRINTK_RECORD_MAX)),
    Column("flags", BigInteger),
    Column("detail", Text),
)

# Runtime events from ``memledger collect`` (tracer/runtime.py), one batch per spool file.
# They are keyed by (host, boot id) rather than by a boots row: a batch may arrive before
# the capture of its boot, and a capture that replaces another must not take them along.
runtime_batches = Table(
    "runtime_batches", metadata,
    Column("id", Id, primary_key=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("host_id", ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("boot_id", String(36), nullable=False),
    Column("source", String(16), nullable=False),
    Column("memledger_version", String(64), nullable=False),
    Column("written_at", DateTime(timezone=True), nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Column("origin", Text),
    Column("event_count", Integer, nullable=False),
    Column("dropped", BigInteger, nullable=False),
    Index("ix_runtime_batches_host_boot", "host_id", "boot_id"),
)

runtime_events = Table(
    "runtime_events", metadata,
    Column("id", Id, primary_key=True),
    Column("batch_id", ForeignKey("runtime_batches.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("seq", BigInteger, nullable=False),
    Column("ts", Float),
    Column("kind", String(16), nullable=False),
    Column("function", String(KSYM_NAME_LEN), nullable=False),  # kernel symbols (0005)
    Column("phys_start", BigInteger),
    Column("phys_end", BigInteger),
    Column("size", BigInteger),
    Column("caller", String(KSYM_NAME_LEN)),
    Column("detail", Text),
)
