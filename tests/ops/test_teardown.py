"""The test fixtures' own promise: the next test starts from empty tables, and what an app writes
at its shutdown (the prediction log's last batch) is written, not lost in an IntegrityError
because its user was deleted before the app had stopped."""

from __future__ import annotations

from sqlalchemy import func, select

from app.db.engine import create_engine
from app.models import Base
from tests.conftest import LogLines, make_settings
from tests.ops.conftest import running_app, user


async def _row_counts(database_url: str) -> dict[str, int]:
    engine = create_engine(make_settings(database_url))
    try:
        async with engine.connect() as conn:
            return {
                table.name: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
                for table in Base.metadata.sorted_tables
            }
    finally:
        await engine.dispose()


async def test_tables_are_emptied_after_the_shutdown_wrote_its_last_records(
    database_url: str, log_lines: LogLines
) -> None:
    # A flush interval longer than the test: the prediction's record is still queued when the
    # app shuts down, so only the shutdown's flush writes it.
    async with running_app(database_url, ml_enabled=True, prediction_log_flush_ms=600_000) as (_, client):
        headers = await user(client)
        predicted = await client.post(
            "/api/v1/predict", headers=headers, json={"features": [5.1, 3.5, 1.4, 0.2]}
        )
        assert predicted.status_code == 200, predicted.text
    failed = [line for line in log_lines() if line.get("event", "").startswith("prediction_log_")]
    assert failed == [], failed
    counts = await _row_counts(database_url)
    assert {name: count for name, count in counts.items() if count} == {}
