"""Command line: `python -m app.cli serve | model-server | migrate | create-admin`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys

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
    # The supervisor's own lines (workers started, died, restarted) as JSON too; each worker
    # configures the same logging when it imports the app.
    configure_logging(settings.log_level, json=settings.log_json)
    if settings.migrate_on_startup:
        # Once here, before the workers start, so they never race to migrate the same file.
        asyncio.run(_migrate(settings))
        os.environ["AUTO_MIGRATE"] = "false"
    return serve(settings)


def cmd_model_server(_args: argparse.Namespace) -> int:
    """The inference tier alone (app.model_server): the manifest's models behind /v2, no database."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the production server").set_defaults(func=cmd_serve)
    sub.add_parser("model-server", help="run the model server (the inference tier alone)").set_defaults(
        func=cmd_model_server
    )
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    admin = sub.add_parser("create-admin", help="create or promote an admin user")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", help="default: $ADMIN_PASSWORD, else asked for")
    admin.set_defaults(func=cmd_create_admin)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
