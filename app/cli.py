"""Command line: `python -m app.cli serve | model-server | worker | migrate | create-admin | models add`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import tempfile

from pydantic import ValidationError

from app.core.config import Settings


def _load_settings() -> Settings:
    """Settings, or a one-line error naming the variable and exit code 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"configuration error: {name + ': ' if name else ''}{message}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_database_writable(settings: Settings) -> None:
    """The embedded SQLite's folder must be writable (the database, its WAL and lock files live
    there): when it is not (a volume mounted read-only, a folder of another user), a one-line error
    and exit code 2 here, instead of a traceback from the first statement of a migration or worker."""
    from app.db.engine import sqlite_file

    path = sqlite_file(settings.database_url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists():
            path.open("r+b").close()
    except OSError as exc:
        print(
            f"start-up error: DATABASE_URL: the SQLite database {path} cannot be written "
            f"({exc.strerror or exc}): mount a writable volume at {path.parent}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


async def _migrate(settings: Settings) -> None:
    from app.db.engine import create_engine
    from app.db.migrations import upgrade_to_head

    engine = create_engine(settings)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


def cmd_migrate(_args: argparse.Namespace) -> int:
    settings = _load_settings()
    _check_database_writable(settings)
    asyncio.run(_migrate(settings))
    print("database migrated to head")
    return 0


async def _create_admin(settings: Settings, email: str, password: str) -> str:
    from app.core.security import PasswordHasher
    from app.db.database import Database
    from app.db.engine import create_engine
    from app.schemas.user import UserCreate
    from app.services.users import UserService

    body = UserCreate(email=email, password=password)
    db = Database(create_engine(settings))
    hasher = PasswordHasher(settings)
    try:
        if settings.migrate_on_startup:
            from app.db.migrations import upgrade_to_head

            await upgrade_to_head(db.engine)
        user, created = await UserService(db, hasher).ensure_admin(body.email, body.password)
        return f"admin {body.email} {'created' if created else 'promoted'} (id {user.id})"
    finally:
        hasher.close()
        await db.dispose()


def cmd_create_admin(args: argparse.Namespace) -> int:
    settings = _load_settings()
    password = args.password or os.environ.get("ADMIN_PASSWORD") or getpass.getpass("Password: ")
    _check_database_writable(settings)
    try:
        print(asyncio.run(_create_admin(settings, args.email, password)))
    except ValidationError as exc:
        for error in exc.errors():
            print(f"invalid {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(_args: argparse.Namespace) -> int:
    """The production entry point: uvicorn with its own worker supervisor, every value from settings."""
    from app.core.logging import configure_logging
    from app.server import serve

    settings = _load_settings()
    _check_database_writable(settings)
    # The supervisor's own lines (workers started, died, restarted) as JSON too; each worker
    # configures the same logging when it imports the app.
    configure_logging(settings.log_level, json=settings.log_json)
    if settings.migrate_on_startup:
        # Once here, before the workers start, so they never race to migrate the same file.
        asyncio.run(_migrate(settings))
        os.environ["AUTO_MIGRATE"] = "false"
    return serve(settings)


def _names(value: str | None) -> list[str] | None:
    return [part.strip() for part in value.split(",") if part.strip()] if value else None


async def _stored_aliases(settings: Settings, name: str) -> tuple[str, ...]:
    """The aliases of model `name` in the fleet's state stored in the database (where requests to
    `/versions/{alias}` go); none while nothing is stored (a database not created or migrated yet).
    A database that cannot be read is said on stderr, and nothing is checked against it."""
    from sqlalchemy import inspect

    from app.db.database import Database
    from app.db.engine import create_engine, sqlite_file
    from app.ml.fleet import FleetState
    from app.models import ModelState
    from app.repositories.model_state import ModelStateRepository

    path = sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        return ()
    db = Database(create_engine(settings))
    try:
        async with db.engine.connect() as conn:
            if not await conn.run_sync(lambda sync: inspect(sync).has_table(ModelState.__tablename__)):
                return ()
        async with db.session(read_only=True) as session:
            row = await ModelStateRepository(session).current()
    except Exception as exc:  # noqa: BLE001 - any failure: the check is skipped, the add goes on
        print(
            f"warning: the model state cannot be read from DATABASE_URL ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); the version is not checked against the model's aliases",
            file=sys.stderr,
        )
        return ()
    finally:
        await db.dispose()
    if row is None:
        return ()
    state = FleetState.from_document(row.revision, row.document, row.changed_by, row.changed_at)
    return tuple(alias.name for alias in state.aliases_of(name))


def cmd_models_add(args: argparse.Namespace) -> int:
    """Bring a model: inspected, run once, hashed, copied into the model directory and entered in
    its manifest; a file that cannot be served is refused with one line (exit code 2)."""
    from pathlib import Path

    from app.ml.errors import ModelLoadError
    from app.ml.importer import add_model

    try:
        settings: Settings | None = Settings()
    except ValidationError:
        settings = None  # with --model-dir, a model can be added without the service's settings
    model_dir = Path(args.model_dir) if args.model_dir else (settings or _load_settings()).ml_model_dir
    try:
        aliases = asyncio.run(_stored_aliases(settings, args.name)) if settings is not None else ()
        spec = add_model(
            model_dir,
            Path(args.file),
            name=args.name,
            version=args.version,
            features=_names(args.features),
            labels=_names(args.labels),
            trusted_types=args.trust,
            description=args.description,
            aliases=aliases,
            reference=Path(args.reference) if args.reference else None,
        )
    except ModelLoadError as exc:
        print(f"cannot serve {exc}", file=sys.stderr)
        return 2
    kind = f"{len(spec.labels)} classes" if spec.task == "classification" else "a regressor"
    if spec.reference is not None:
        kind += f", a reference of {spec.reference.rows} rows"
    print(
        f"added {spec.name} {spec.version} ({spec.format}, {len(spec.features)} features, {kind}) "
        f"as {model_dir / str(spec.file)}; serve it without a restart: POST "
        f"/api/v1/model-repository/{spec.name}/versions/{spec.version}/load (docs/models.md)"
    )
    return 0


def cmd_model_server(_args: argparse.Namespace) -> int:
    """The inference tier alone (app.model_server): the manifest's models behind /v2; of the
    database (DATABASE_URL) it reads only the model state, which versions to load."""
    from app.core.logging import configure_logging
    from app.server import MODEL_SERVER_APP, serve

    settings = _load_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    if settings.environment == "production" and settings.model_server_token is None:
        print(
            "configuration error: MODEL_SERVER_TOKEN: must be set when ENVIRONMENT=production "
            "(the web tier sends it to the model server as a bearer token)",
            file=sys.stderr,
        )
        return 2
    if not settings.ml_enabled or settings.ml_remote_url is not None:
        print(
            "configuration error: ML_ENABLED / ML_REMOTE_URL: a model server serves its models itself",
            file=sys.stderr,
        )
        return 2
    return serve(settings, app=MODEL_SERVER_APP)


def cmd_worker(_args: argparse.Namespace) -> int:
    """A job worker (app.worker): runs batch jobs submitted to any web process; serves no HTTP."""
    from app.core.logging import configure_logging
    from app.worker import run_worker

    settings = _load_settings()
    _check_database_writable(settings)
    configure_logging(settings.log_level, json=settings.log_json)
    return run_worker(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the production server").set_defaults(func=cmd_serve)
    sub.add_parser("model-server", help="run the model server (the inference tier alone)").set_defaults(
        func=cmd_model_server
    )
    sub.add_parser("worker", help="run a batch job worker (docs/jobs.md)").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    admin = sub.add_parser("create-admin", help="create or promote an admin user")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", help="default: $ADMIN_PASSWORD, else asked for")
    admin.set_defaults(func=cmd_create_admin)
    models = sub.add_parser("models", help="the model directory").add_subparsers(dest="action", required=True)
    from app.ml.formats import RUNTIMES  # the standard library only: cheap at every start

    kinds = RUNTIMES.values()
    add = models.add_parser(
        "add", help=f"bring a model file: {', '.join(k.title for k in kinds)} (docs/models.md)"
    )
    add.add_argument("file", help=f"a file ending {', '.join(k.suffix for k in kinds)}")
    add.add_argument(
        "--name", required=True, help="the model's name in the API (a-z, 0-9, _ and -; at most 64)"
    )
    add.add_argument(
        "--version", required=True, help="a-z, 0-9, ., _ and - (at most 64), not an alias's name"
    )
    add.add_argument(
        "--features", help="comma-separated feature names (default: the model's, or x0, x1, ...)"
    )
    add.add_argument("--labels", help="comma-separated class names in output order (default: the model's)")
    add.add_argument("--trust", action="append", default=[], help="a skops type to trust (repeat)")
    add.add_argument("--description", default="")
    add.add_argument(
        "--reference",
        help="a CSV of training or validation rows (header: the feature names) the version's drift "
        "is measured against (docs/models.md)",
    )
    add.add_argument("--model-dir", help="default: ML_MODEL_DIR")
    add.set_defaults(func=cmd_models_add)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
