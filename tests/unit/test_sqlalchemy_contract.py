"""What the statement runner (app.db.statements) takes from SQLAlchemy beyond `execute`: each use
held here, so the SQLAlchemy release that changes one fails this file rather than a request.

Public and documented: `SQLCompiler.construct_expanded_state` (its `statement`, `positiontup`,
`parameters`), `binds`, `insert_prefetch`/`update_prefetch`, `effective_returning`,
`ColumnDefault.arg`/`is_callable`, `PoolProxiedConnection.driver_connection`. Not public, with no
public replacement: `sqlalchemy.util.concurrency.greenlet_spawn` (the reason is beside its import)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, cast

import aiosqlite
import pytest
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.schema import ColumnDefault
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util.concurrency import await_only, greenlet_spawn

from app.db.statements import _Compiled
from app.models import Item
from app.repositories.items import _AS_CALLER

_items = cast(Table, Item.__table__)
_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


def _compile(statement: Any, keys: list[str]) -> SQLCompiler:
    return cast(SQLCompiler, statement.compile(dialect=_DIALECT, column_keys=keys))


def test_the_expanded_state_gives_sql_and_order_and_binds_their_types() -> None:
    now = bindparam("b_now", type_=_items.c.created_at.type)
    compiled = _compile(select(_items.c.id).where(_items.c.created_at > now), ["b_now"])
    state = compiled.construct_expanded_state({"b_now": None})
    assert "$1" in state.statement
    assert list(state.positiontup or ()) == ["b_now"]
    assert not state.parameter_expansion
    # UTCDateTime's bind check, run on the asyncpg path too: a naive datetime is refused.
    process = compiled.binds["b_now"].type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
    assert process is not None
    with pytest.raises(ValueError, match="naive"):
        process(datetime(2026, 1, 1))  # noqa: DTZ001 - naive on purpose


def test_a_constant_compiled_in_is_among_the_expanded_parameters() -> None:
    state = _compile(select(_items.c.id).limit(20), []).construct_expanded_state({})
    (name,) = state.positiontup or ()
    assert state.parameters[name] == 20


def test_python_side_defaults_are_prefetched_under_their_column_keys() -> None:
    add = _AS_CALLER[False].add
    keys = ["b_user", "b_session", "b_now", "b_title", "b_description"]
    compiled = _compile(add, keys)
    assert [column.key for column in compiled.insert_prefetch] == ["created_at", "updated_at"]
    assert {"created_at", "updated_at"} <= set(
        compiled.construct_expanded_state(dict.fromkeys(keys)).positiontup or ()
    )
    assert [column.key for column in compiled.effective_returning or ()][:2] == ["id", "owner_id"]
    changed = _compile(update(_items).where(_items.c.id == bindparam("b_id")), ["title", "b_id"])
    assert [column.key for column in changed.update_prefetch] == ["updated_at"]


def test_a_callable_default_is_wrapped_to_take_the_execution_context() -> None:
    default = _items.c.updated_at.default
    assert isinstance(default, ColumnDefault)
    assert default.is_callable

    class Context:
        def get_current_parameters(self) -> dict[str, Any]:
            return {"created_at": "then"}

    assert default.arg(Context()) == "then"


def test_the_runner_computes_the_defaults_sqlalchemy_would() -> None:
    compiled = _Compiled(insert(_items), _DIALECT, {"owner_id": 1, "title": "t", "description": None})
    args = dict(
        zip(compiled.names, compiled.args({"owner_id": 1, "title": "t", "description": None}), strict=True)
    )
    assert args["created_at"] is not None
    assert args["updated_at"] == args["created_at"]


async def test_a_raw_connection_gives_the_driver_connection() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        raw: PoolProxiedConnection = await engine.raw_connection()
        assert isinstance(raw.driver_connection, aiosqlite.Connection)
        assert raw.is_valid
        await greenlet_spawn(raw.close)
    finally:
        await engine.dispose()


def test_the_greenlet_bridge_runs_sync_pool_code_that_awaits() -> None:
    from sqlalchemy.util.concurrency import greenlet_spawn

    async def main() -> int:
        return cast(int, await greenlet_spawn(lambda: await_only(asyncio.sleep(0, result=5))))

    assert asyncio.run(main()) == 5
