"""How far into its boot each capture was taken

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 13:40:00.000000

captures.uptime_s: the boot's /proc/uptime when the capture was taken (CLOCK_BOOTTIME,
which only grows within a boot). Of two captures of one boot, the later is the one taken
further into it, whatever either's wall clock said; captures stored before this revision
have none and are ordered by their capture time, as before.
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column: ALTER TABLE … ADD COLUMN on both backends (a batch copy of the
    # table would drop captures, which boots.capture_id refers to).
    op.add_column('captures', sa.Column('uptime_s', sa.Float(), nullable=True))


def downgrade() -> None:
    # Both backends drop a column in place (SQLite since 3.35), for the same reason.
    op.execute('ALTER TABLE captures DROP COLUMN uptime_s')
