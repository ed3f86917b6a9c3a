"""What each boot can measure, its anomaly codes and memory size; one vendor name

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 22:40:00.000000

``compare`` counts a figure only on the boots that can measure it (ledger/measures.py),
pairs a host's boots, and says what else differs between two sets of boots. For that,
without reading every boot's JSON document, ``boots`` gains ``efi_debug``, ``kexec``
and ``log_complete``, and ``ledgers`` gains ``anomaly_codes`` and ``memory_bytes``.
``firmware_vendor`` becomes one name per vendor (ledger/vendors.py). Existing rows are
filled from their ledger documents; a document from before ``kernel.kexec`` existed
says kexec through its loader or its kdump flag.
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _backfill() -> None:
    # Imported here: the migration module must load without the package on older trees.
    from memledger.ledger.vendors import vendor_name

    conn = op.get_bind()
    meta = sa.MetaData()
    boots = sa.Table('boots', meta, autoload_with=conn)
    ledgers = sa.Table('ledgers', meta, autoload_with=conn)
    docs = sa.Table('ledger_documents', meta, autoload_with=conn)
    rows = conn.execute(sa.select(docs.c.boot_pk, docs.c.document)).all()
    for pk, doc in rows:
        kernel, fw, fid = (doc.get(k) or {} for k in ("kernel", "firmware", "fidelity"))
        kexec = kernel.get("kexec")
        if kexec is None and (kernel.get("loader") == "kexec" or kernel.get("kdump")):
            kexec = True
        dmi = fw.get("dmi") or {}
        codes = sorted({a["code"] for a in doc.get("anomalies") or []})
        conn.execute(sa.update(boots).where(boots.c.id == pk).values(
            efi_debug=fid.get("efi_debug"), kexec=kexec, log_complete=fid.get("log_complete"),
            firmware_vendor=vendor_name(dmi.get("bios_vendor") or fw.get("efi_vendor"))))
        conn.execute(sa.update(ledgers).where(ledgers.c.boot_pk == pk).values(
            anomaly_codes=" ".join(codes) or None,
            memory_bytes=(doc.get("kernel_accounting") or {}).get("present_bytes")))


# Plain ALTER TABLE ADD/DROP COLUMN on both backends (SQLite has DROP COLUMN since 3.35):
# batch mode would copy and drop ``boots``, and the drop cascades to every boot's ledger.
def upgrade() -> None:
    op.add_column('boots', sa.Column('efi_debug', sa.Boolean(), nullable=True))
    op.add_column('boots', sa.Column('kexec', sa.Boolean(), nullable=True))
    op.add_column('boots', sa.Column('log_complete', sa.Boolean(), nullable=True))
    op.add_column('ledgers', sa.Column('anomaly_codes', sa.Text(), nullable=True))
    op.add_column('ledgers', sa.Column('memory_bytes', sa.BigInteger(), nullable=True))
    _backfill()


def downgrade() -> None:
    for table, column in (('ledgers', 'memory_bytes'), ('ledgers', 'anomaly_codes'),
                          ('boots', 'log_complete'), ('boots', 'kexec'), ('boots', 'efi_debug')):
        op.drop_column(table, column)
