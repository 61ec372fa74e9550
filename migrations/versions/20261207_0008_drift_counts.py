"""drift counts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 18:14:41.591880

`drift_counts`: the rows each model version was asked about, per feature (and its answers) and bin
of its reference, summed by ten-minute period as the prediction log is written (issue 24,
app.ml.drift). Its primary key is also the only index drift's windows read: a version's periods,
newest first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('drift_counts',
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('version', sa.String(length=50), nullable=False),
    sa.Column('period', sa.DateTime(timezone=True), nullable=False),
    sa.Column('feature', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('bin', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('model', 'version', 'period', 'feature', 'bin', name=op.f('pk_drift_counts'))
    )


def downgrade() -> None:
    op.drop_table('drift_counts')
