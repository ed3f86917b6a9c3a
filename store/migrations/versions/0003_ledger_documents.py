"""Ledger documents in a table of their own

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 09:50:00.000000

The whole ledger document (3 to 4 KB of JSON) moves out of ``ledgers``, which keeps only
the headline columns. SQLite stores a row whole, so with the document inline a scan of
every boot's headline figures (``memledger compare``, the fleet metrics) read one 4 KiB
page per boot: 0.45 s for 100 000 boots, against 0.05 s now (BENCHMARKS.md). PostgreSQL
already kept the documents out of line (TOAST); the layout is now the same on both.
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('ledger_documents',
    sa.Column('boot_pk', Id, nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['boot_pk'], ['boots.id'], name=op.f('fk_ledger_documents_boot_pk_boots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('boot_pk', name=op.f('pk_ledger_documents'))
    )
    op.execute('INSERT INTO ledger_documents (boot_pk, document) SELECT boot_pk, document FROM ledgers')
    with op.batch_alter_table('ledgers', schema=None) as batch_op:
        batch_op.drop_column('document')


def downgrade() -> None:
    with op.batch_alter_table('ledgers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('document', sa.JSON(), nullable=True))
    op.execute('UPDATE ledgers SET document = (SELECT d.document FROM ledger_documents d '
               'WHERE d.boot_pk = ledgers.boot_pk)')
    with op.batch_alter_table('ledgers', schema=None) as batch_op:
        batch_op.alter_column('document', existing_type=sa.JSON(), nullable=False)
    op.drop_table('ledger_documents')
