"""Initial schema: hosts, captures, boots, ledgers, events

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 03:44:27.560022
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('captures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('format_version', sa.Integer(), nullable=False),
    sa.Column('memledger_version', sa.String(length=64), nullable=False),
    sa.Column('captured_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('origin', sa.Text(), nullable=True),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_captures')),
    sa.UniqueConstraint('sha256', name=op.f('uq_captures_sha256'))
    )
    op.create_table('hosts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('machine_id', sa.String(length=32), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=True),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hosts')),
    sa.UniqueConstraint('machine_id', name=op.f('uq_hosts_machine_id'))
    )
    op.create_table('boots',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('host_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('boot_id', sa.String(length=36), nullable=False),
    sa.Column('capture_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('captured_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('kernel_release', sa.String(length=255), nullable=True),
    sa.Column('cmdline', sa.Text(), nullable=True),
    sa.Column('efi', sa.Boolean(), nullable=True),
    sa.Column('firmware_vendor', sa.String(length=255), nullable=True),
    sa.Column('firmware_version', sa.String(length=255), nullable=True),
    sa.Column('product', sa.String(length=255), nullable=True),
    sa.Column('fidelity', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['capture_id'], ['captures.id'], name=op.f('fk_boots_capture_id_captures')),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], name=op.f('fk_boots_host_id_hosts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_boots')),
    sa.UniqueConstraint('capture_id', name=op.f('uq_boots_capture_id')),
    sa.UniqueConstraint('host_id', 'boot_id', name=op.f('uq_boots_host_id'))
    )
    with op.batch_alter_table('boots', schema=None) as batch_op:
        batch_op.create_index('ix_boots_captured_at', ['captured_at'], unique=False)
        batch_op.create_index('ix_boots_kernel_release', ['kernel_release'], unique=False)

    op.create_table('events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('boot_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('ts', sa.Float(), nullable=True),
    sa.Column('function', sa.String(length=64), nullable=False),
    sa.Column('phys_start', sa.BigInteger(), nullable=True),
    sa.Column('phys_end', sa.BigInteger(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('caller', sa.String(length=255), nullable=True),
    sa.Column('flags', sa.BigInteger(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['boot_pk'], ['boots.id'], name=op.f('fk_events_boot_pk_boots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_events_boot_pk'), ['boot_pk'], unique=False)

    op.create_table('ledgers',
    sa.Column('boot_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('schema_version', sa.Integer(), nullable=False),
    sa.Column('computed_with', sa.String(length=64), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('bs_total_bytes', sa.BigInteger(), nullable=True),
    sa.Column('bs_reclaimed_bytes', sa.BigInteger(), nullable=True),
    sa.Column('bs_kept_bytes', sa.BigInteger(), nullable=True),
    sa.Column('bs_leaked_bytes', sa.BigInteger(), nullable=True),
    sa.Column('low_usable_bytes', sa.BigInteger(), nullable=True),
    sa.Column('low_reserved_bytes', sa.BigInteger(), nullable=True),
    sa.Column('low_boot_services_bytes', sa.BigInteger(), nullable=True),
    sa.Column('low_freed_bytes', sa.BigInteger(), nullable=True),
    sa.Column('anomaly_count', sa.Integer(), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['boot_pk'], ['boots.id'], name=op.f('fk_ledgers_boot_pk_boots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('boot_pk', name=op.f('pk_ledgers'))
    )


def downgrade() -> None:
    op.drop_table('ledgers')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_boot_pk'))

    op.drop_table('events')
    with op.batch_alter_table('boots', schema=None) as batch_op:
        batch_op.drop_index('ix_boots_kernel_release')
        batch_op.drop_index('ix_boots_captured_at')

    op.drop_table('boots')
    op.drop_table('hosts')
    op.drop_table('captures')
