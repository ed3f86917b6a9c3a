"""A host is its machine id, who sent its captures, and its hardware

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 15:50:00.000000

Golden-image clones share /etc/machine-id, so a machine id alone merged two machines into
one host. A host is now (machine_id, sender, hardware):

- hosts.sender: the identity a fleet daemon authenticated the captures' sender as
  ("certificate:CN" or "user:NAME"); '' for captures stored on the host itself or by
  `memledger ingest`;
- hosts.hardware: a digest of the capture's DMI product UUID and serial; '' when the
  capture does not show them (they are readable by root only).

'' rather than NULL, so that the unique constraint holds (NULLs are never equal).

On SQLite the unique constraint is part of the table, so the table is copied; the copy
runs with foreign keys off (store/migrate.py), or dropping the old table would delete
every boot through ON DELETE CASCADE.
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sender', sa.String(length=255), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('hardware', sa.String(length=64), nullable=False,
                                      server_default=''))
        batch_op.drop_constraint('uq_hosts_machine_id', type_='unique')
        batch_op.create_unique_constraint('uq_hosts_machine_id',
                                          ['machine_id', 'sender', 'hardware'])


def downgrade() -> None:
    # Refused while two hosts share a machine id: merging them again is what this revision
    # stopped.
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_constraint('uq_hosts_machine_id', type_='unique')
        batch_op.create_unique_constraint('uq_hosts_machine_id', ['machine_id'])
        batch_op.drop_column('hardware')
        batch_op.drop_column('sender')
