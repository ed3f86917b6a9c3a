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
    with op.batch_alter_table('captures', schema=None) as batch_op:
        batch_op.add_column(sa.Column('uptime_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('captures', schema=None) as batch_op:
        batch_op.drop_column('uptime_s')
