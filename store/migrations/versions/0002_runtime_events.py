"""Runtime event batches from memledger collect

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 06:12:11.858890

memledger collect's event batches (tracer/runtime.py): one row per spool file, keyed
by its sha256, and its events.
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('runtime_batches',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('host_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('boot_id', sa.String(length=36), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('memledger_version', sa.String(length=64), nullable=False),
    sa.Column('written_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('origin', sa.Text(), nullable=True),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('dropped', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], name=op.f('fk_runtime_batches_host_id_hosts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runtime_batches')),
    sa.UniqueConstraint('sha256', name=op.f('uq_runtime_batches_sha256'))
    )
    with op.batch_alter_table('runtime_batches', schema=None) as batch_op:
        batch_op.create_index('ix_runtime_batches_host_boot', ['host_id', 'boot_id'], unique=False)

    op.create_table('runtime_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('batch_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('function', sa.String(length=64), nullable=False),
    sa.Column('phys_start', sa.BigInteger(), nullable=True),
    sa.Column('phys_end', sa.BigInteger(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('caller', sa.String(length=255), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['runtime_batches.id'], name=op.f('fk_runtime_events_batch_id_runtime_batches'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runtime_events'))
    )
    with op.batch_alter_table('runtime_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runtime_events_batch_id'), ['batch_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('runtime_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runtime_events_batch_id'))

    op.drop_table('runtime_events')
    with op.batch_alter_table('runtime_batches', schema=None) as batch_op:
        batch_op.drop_index('ix_runtime_batches_host_boot')

    op.drop_table('runtime_batches')
