"""Text columns as wide as what the kernel can write into them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000

A DMI string is a sysfs attribute, up to a page (4096 characters), and a kernel symbol up
to KSYM_NAME_LEN (512) since v6.1; the columns that hold them were 255 and 64 wide, so
PostgreSQL refused with "value too long for type character varying(255)" what SQLite
stored. A capture's events (a function and its caller, "efi_reserve_boot_services+0x86/
0xc2") come from one kernel log line, at most a printk record (1024): they were cut to 64
and 255 without a word. SQLite does not enforce a VARCHAR's length, so only PostgreSQL changes (a
metadata-only change there: widening a varchar rewrites no row).
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# (table, column, old width, new width); the widths are tracer/caps.py's SYSFS_ATTR_MAX,
# KSYM_NAME_LEN and PRINTK_RECORD_MAX, written out: a migration stays as it was written.
_WIDENED = (
    ('boots', 'firmware_vendor', 255, 4096),
    ('boots', 'firmware_version', 255, 4096),
    ('boots', 'product', 255, 4096),
    ('runtime_events', 'function', 64, 512),
    ('runtime_events', 'caller', 255, 512),
    ('events', 'function', 64, 1024),
    ('events', 'caller', 255, 1024),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, column, old, new in _WIDENED:
        op.alter_column(table, column, type_=sa.String(length=new),
                        existing_type=sa.String(length=old))


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, column, old, new in _WIDENED:
        op.alter_column(table, column, type_=sa.String(length=old),
                        existing_type=sa.String(length=new))
