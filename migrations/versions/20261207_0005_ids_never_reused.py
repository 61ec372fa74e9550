"""ids never reused; deactivated users' API keys revoked

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 03:00:00

SQLite hands out the highest id again once its row is deleted, unless the table says AUTOINCREMENT:
a deleted user's API key could then act as the next user to register (issue 21). SQLite cannot add
AUTOINCREMENT to a table, so each table with an integer id is rebuilt (alembic's batch mode: a new
table, the rows copied, the old one dropped). The rebuild runs with foreign keys off (app.db.migrations
turns them off for SQLite migrations): with them on, dropping the old `users` would delete every row that
refers to it. SQLite then starts each table's sequence at its highest id, so ids issued before this
migration and already deleted above it may be issued once more; a running process remembers no key
across the restart this migration needs, and the per-request check matches a key by its stored hash.
PostgreSQL's sequences never reuse an id: nothing to rebuild there.

Deactivating a user now revokes their API keys for good (as it ends their login sessions), so that
re-activation brings none back and every process agrees at once; keys of users deactivated before
this migration are revoked here.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Parents before children, as the foreign keys run.
TABLES = ('users', 'refresh_tokens', 'items', 'prediction_records', 'api_keys', 'model_state_changes')


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}
        ):
            pass
    problems = op.get_bind().exec_driver_sql('PRAGMA foreign_key_check').fetchall()
    if problems:
        raise RuntimeError(f'foreign keys broken by the rebuild: {problems[:5]}')


def upgrade() -> None:
    _rebuild(True)
    users = sa.table('users', sa.column('id', sa.Integer()), sa.column('is_active', sa.Boolean()))
    keys = sa.table(
        'api_keys',
        sa.column('user_id', sa.Integer()),
        sa.column('revoked_at', sa.DateTime(timezone=True)),
    )
    op.execute(
        keys.update()
        .where(
            keys.c.revoked_at.is_(None),
            keys.c.user_id.in_(sa.select(users.c.id).where(users.c.is_active.is_(sa.false()))),
        )
        .values(revoked_at=datetime.now(UTC))
    )


def downgrade() -> None:
    _rebuild(False)
