"""prediction ids, outputs and feedback

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 15:31:25.458716

Each prediction's record gains the id its answer carried (a version-7 UUID made by the web process,
app.core.ids) and what the model answered per row; `prediction_feedback` holds the truths sent for
them, scored as they arrive (issue 24). Records written before have neither: feedback on them is a
404, as their ids were never given out.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('prediction_feedback',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('record_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('version', sa.String(length=50), nullable=False),
    sa.Column('row', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=100), nullable=True),
    sa.Column('correct', sa.Integer(), nullable=True),
    sa.Column('log_loss', sa.Float(), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('abs_error', sa.Float(), nullable=True),
    sa.Column('predicted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['record_id'], ['prediction_records.id'], name=op.f('fk_prediction_feedback_record_id_prediction_records'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_prediction_feedback_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prediction_feedback')),
    sa.UniqueConstraint('record_id', 'version', 'row', name='uq_prediction_feedback_record_id_version_row'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('prediction_feedback', schema=None) as batch_op:
        batch_op.create_index('ix_prediction_feedback_model_version_id', ['model', 'version', 'id'], unique=False)
        batch_op.create_index(
            'ix_prediction_feedback_model_version_predicted_at', ['model', 'version', 'predicted_at'], unique=False
        )

    with op.batch_alter_table('prediction_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('prediction_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('outputs', sa.JSON(), nullable=True))
        batch_op.create_index('ix_prediction_records_prediction_id', ['prediction_id'], unique=True)

    op.create_table('shadow_records',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prediction_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('version', sa.String(length=50), nullable=False),
    sa.Column('shadow_version', sa.String(length=50), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('agreed', sa.Integer(), nullable=True),
    sa.Column('abs_difference', sa.Float(), nullable=True),
    sa.Column('outputs', sa.JSON(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_shadow_records_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shadow_records')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('shadow_records', schema=None) as batch_op:
        batch_op.create_index('ix_shadow_records_model_created_at', ['model', 'created_at'], unique=False)
        batch_op.create_index('ix_shadow_records_model_id', ['model', 'id'], unique=False)
        batch_op.create_index('ix_shadow_records_prediction_id', ['prediction_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('shadow_records', schema=None) as batch_op:
        batch_op.drop_index('ix_shadow_records_prediction_id')
        batch_op.drop_index('ix_shadow_records_model_id')
        batch_op.drop_index('ix_shadow_records_model_created_at')

    op.drop_table('shadow_records')
    # Dropping a column rebuilds the table on SQLite: it keeps AUTOINCREMENT (migration 0005).
    with op.batch_alter_table(
        'prediction_records', schema=None, table_kwargs={'sqlite_autoincrement': True}
    ) as batch_op:
        batch_op.drop_index('ix_prediction_records_prediction_id')
        batch_op.drop_column('outputs')
        batch_op.drop_column('prediction_id')

    with op.batch_alter_table('prediction_feedback', schema=None) as batch_op:
        batch_op.drop_index('ix_prediction_feedback_model_version_predicted_at')
        batch_op.drop_index('ix_prediction_feedback_model_version_id')

    op.drop_table('prediction_feedback')
