"""The one settings object: every tunable of the service, read from the environment and `.env`."""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ROOT_DIR = Path(__file__).resolve().parents[2]
DEV_SECRET_KEY_FILE = ROOT_DIR / "data" / ".dev-secret-key"

# Keys shorter than this are refused in production: HS256 wants at least 256 bits of key.
MIN_SECRET_KEY_LENGTH = 32
WEAK_SECRET_KEYS = frozenset({"changeme", "secret", "change-me", "dev", "development"})
# A long key can still be a placeholder ("change-me-...") or a repeated character ("xxxx...").
WEAK_SECRET_KEY_PARTS = ("changeme", "change-me", "change_me", "replace-me", "your-secret")
MIN_SECRET_KEY_DISTINCT_CHARACTERS = 10


class SettingsError(ValueError):
    """A configuration that must not start the service; its message is one line naming the variable."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Environment-driven settings. Each field is read from the upper-case variable of its name."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        # A validation error would otherwise quote its input, SECRET_KEY included, in a traceback.
        hide_input_in_errors=True,
    )

    # --- general ---
    environment: Literal["development", "test", "production"] = Field(
        "development", description="development, test or production; production enforces safe settings."
    )
    app_name: str = Field("fastapi-ml-service", description="Service name shown in the docs and logs.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_json: bool = Field(True, description="JSON log lines (false: human-readable console lines).")
    access_log: bool = Field(True, description="Write one access log line per request.")

    # --- HTTP server ---
    host: str = Field("127.0.0.1", description="Address the server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the server binds to.")
    web_concurrency: int = Field(1, ge=1, description="uvicorn worker processes (production entry point).")
    limit_concurrency: int = Field(
        2048,
        ge=2,
        description="uvicorn's --limit-concurrency per worker: open connections (idle keep-alive ones "
        "included) past which uvicorn itself answers a plain-text 503; the outer backstop.",
    )
    max_requests_in_flight: int = Field(
        1024,
        ge=1,
        description="Requests in flight per worker past which new ones get a 503 problem with "
        "Retry-After at once (load shedding); below limit_concurrency. About half a second of work "
        "for one worker here; see docs/performance.md before lowering it.",
    )
    gc_freeze: bool = Field(
        True,
        description="After start-up, exempt every object then alive from garbage collection "
        "(gc.freeze): collections stop walking the loaded app's objects (a p99 cut, docs/performance.md).",
    )
    gc_gen0_threshold: int = Field(
        10_000,
        ge=0,
        description="Allocations between young-generation garbage collections (0: Python's 700).",
    )
    backlog: int = Field(2048, ge=1, description="TCP listen backlog.")
    timeout_graceful_shutdown: int = Field(
        30, ge=1, description="Seconds a worker may take to finish accepted requests on SIGTERM."
    )
    timeout_keep_alive: int = Field(5, ge=1, description="Seconds an idle keep-alive connection is kept.")
    limit_max_requests: int | None = Field(
        None, ge=1, description="Restart a worker after this many requests (unset: never)."
    )
    limit_max_requests_jitter: int = Field(
        0, ge=0, description="Random extra requests added to limit_max_requests per worker."
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1", description="Proxy addresses trusted for X-Forwarded-* headers (comma-separated)."
    )
    max_request_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest accepted request body; larger bodies get 413."
    )
    max_request_headers: int = Field(
        100,
        ge=1,
        description="Most request header lines accepted; more get 431 (Apache's and Envoy's default).",
    )
    max_request_header_bytes: int = Field(
        32_768,
        ge=1,
        description="Largest total of request header names and values; larger get 431 (nginx's default "
        "buffers hold 4 x 8 KiB).",
    )
    docs_enabled: bool | None = Field(
        None, description="Serve /docs, /redoc and /openapi.json (unset: on except in production)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated); empty: none."
    )
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="Host headers accepted (comma-separated)."
    )

    # --- database ---
    database_url: str = Field(
        f"sqlite+aiosqlite:///{ROOT_DIR / 'data' / 'app.db'}",
        description="SQLAlchemy URL: sqlite+aiosqlite:///path or postgresql+asyncpg://user:pw@host/db.",
    )
    db_pool_size: int = Field(10, ge=1, description="PostgreSQL connections kept open per worker.")
    db_max_overflow: int = Field(10, ge=0, description="Extra PostgreSQL connections allowed at peak.")
    db_pool_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for a pooled connection before a 503."
    )
    db_pool_pre_ping: bool = Field(True, description="Check a pooled connection before using it.")
    db_pool_recycle: int = Field(1800, ge=-1, description="Seconds after which a connection is replaced.")
    db_statement_timeout_ms: int = Field(
        10_000, ge=0, description="PostgreSQL statement_timeout for the service's sessions (0: none)."
    )
    sqlite_busy_timeout_ms: int = Field(5000, ge=0, description="SQLite busy timeout.")
    auto_migrate: bool | None = Field(
        None, description="Apply migrations at start-up (unset: only for the embedded SQLite)."
    )
    db_echo: bool = Field(False, description="Log every SQL statement (debugging only).")

    # --- tokens ---
    secret_key: SecretStr | None = Field(
        None,
        description="HMAC key for access tokens and API keys' stored hashes (rotating it ends both); "
        "required (32+ chars) in production.",
    )
    dev_secret_key_file: Path = Field(
        DEV_SECRET_KEY_FILE,
        description="Outside production, where the generated key is kept when SECRET_KEY is unset.",
    )
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = Field("HS256", description="JWT algorithm.")
    jwt_issuer: str = Field("fastapi-ml-service", description="iss claim of access tokens.")
    jwt_audience: str = Field("fastapi-ml-service", description="aud claim of access tokens.")
    access_token_expire_seconds: int = Field(900, ge=30, description="Access token lifetime.")
    refresh_token_expire_seconds: int = Field(14 * 24 * 3600, ge=60, description="Refresh token lifetime.")

    # --- passwords (Argon2id; OWASP minimum m=19 MiB, t=2, p=1) ---
    password_hash_memory_kib: int = Field(19_456, ge=8, description="Argon2 memory cost in KiB.")
    password_hash_time_cost: int = Field(2, ge=1, description="Argon2 iterations.")
    password_hash_parallelism: int = Field(1, ge=1, description="Argon2 lanes.")
    password_hash_concurrency: int = Field(
        4, ge=1, description="Password hashes computed at once per worker (bounds their memory)."
    )

    # --- shared state ---
    redis_url: str | None = Field(None, description="Redis URL for limits shared by replicas.")
    redis_timeout: float = Field(
        0.25, gt=0, description="Seconds a Redis connect or command may take before limits fail open."
    )
    redis_retry_interval: float = Field(
        2.0,
        gt=0,
        description="Seconds limits stay per-process after a Redis failure before Redis is retried.",
    )

    # --- rate limits ("N/second|minute|hour|day"; empty: off) ---
    rate_limit_enabled: bool = Field(True, description="Apply the rate limits below.")
    rate_limit_auth_per_address: str | None = Field(
        "20/minute", description="Log-ins and registrations per client address (each endpoint)."
    )
    rate_limit_auth_per_account: str | None = Field(
        "5/minute", description="Log-ins and registrations per account email (each endpoint)."
    )
    rate_limit_per_user: str | None = Field(
        "1200/minute",
        description="Requests per user with their access tokens, all endpoints together.",
    )
    rate_limit_per_api_key: str | None = Field(
        "1200/minute",
        description="Requests per API key, all endpoints together (each key counted on its own, apart "
        "from its user's access tokens).",
    )
    api_keys_per_user: int = Field(
        20,
        ge=1,
        le=1000,
        description="Live (unrevoked, unexpired) API keys one user may hold; making one more is a 409. "
        "Each key has its own rate limit, so this also caps what one user's programs may send: at most "
        "this many times `RATE_LIMIT_PER_API_KEY`.",
    )
    api_key_usage_flush_seconds: float = Field(
        30.0,
        gt=0,
        description="How often each process writes its API keys' `last_used_at` (one statement per "
        "flush, never one per request).",
    )

    # --- observability and security headers ---
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    prometheus_multiproc_dir: Path | None = Field(
        None,
        description="Folder for prometheus_client's multiprocess files (unset: a fresh folder under "
        "/tmp when several workers run). Emptied by the serve command at start.",
    )
    otel_enabled: bool = Field(
        False, description="Export OpenTelemetry traces (OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT)."
    )
    hsts_max_age: int = Field(
        31_536_000, ge=0, description="Strict-Transport-Security max-age on https requests (0: no header)."
    )

    # --- models ---
    ml_remote_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+/?$",
        description="Base URL of this service's model server (e.g. http://model-server:8001): every "
        "model of the manifest is then served from there (`executor: remote`), and this process "
        "loads none. Unset: as the manifest says (`make run`: every model in process).",
    )
    model_server_token: SecretStr | None = Field(
        None,
        description="Shared service token of the model tier: the model server (`python -m app.cli "
        "model-server`) requires it as `Authorization: Bearer`, and the web tier sends it to remote "
        'models whose manifest entry says `"auth": "service-token"`. Required by a model server '
        "with ENVIRONMENT=production.",
    )
    ml_enabled: bool = Field(True, description="Load and serve the models of the manifest.")
    model_state_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often each process reads the revision of the fleet's desired model state "
        "(what is loaded, where each alias points) and converges on a new one: the bound, after "
        "an admin's change, within which every worker and replica serves it (docs/models.md).",
    )
    ml_model_dir: Path = Field(ROOT_DIR / "ml_models", description="Folder of manifest.json and model files.")
    ml_onnx_threads: int = Field(2, ge=1, description="Threads running ONNX models (shared by all).")
    ml_process_workers: int = Field(
        1, ge=1, description="Worker processes per process-pool model (each holds the model)."
    )
    ml_process_worker_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="How much model worker processes lower their CPU priority (nice): when they and the "
        "web worker want the same core, the event loop serving every other request runs first.",
    )
    ml_batching_enabled: bool = Field(True, description="Coalesce concurrent requests into batches.")
    ml_start_method: Literal["forkserver", "spawn"] = Field(
        "forkserver", description="How model worker processes start."
    )
    prediction_log_queue_size: int = Field(
        10_000, ge=1, description="Prediction records waiting to be written; beyond it they are dropped."
    )
    prediction_log_batch_size: int = Field(500, ge=1, description="Records written per insert.")
    prediction_log_flush_ms: int = Field(
        200, ge=1, description="Longest wait before a partial batch is written."
    )

    shadow_queue_size: int = Field(
        1000,
        ge=1,
        description="Copies of requests waiting for an alias's shadow (docs/models.md); beyond it "
        "they are dropped, counted.",
    )
    shadow_workers: int = Field(
        4, ge=1, le=64, description="Copies of requests a process runs on shadows at once."
    )

    # --- batch jobs (docs/jobs.md) ---
    jobs_embedded_worker: bool | None = Field(
        None,
        description="Run batch jobs inside each web process (a Huey consumer in threads, on the web "
        "process's own models). Unset: on with a SQLite DATABASE_URL (`make run`, nothing else to "
        "start), off with PostgreSQL, where `python -m app.cli worker` processes run them.",
    )
    jobs_worker_threads: int = Field(
        1, ge=1, le=64, description="Jobs one worker process (or the embedded worker) runs at once."
    )
    jobs_chunk_rows: int = Field(
        4096,
        ge=1,
        le=1_000_000,
        description="Rows read, scored and committed together: the unit of progress, of resuming "
        "after a crash and of cancelling.",
    )
    jobs_lease_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How long a running job stays claimed by its worker without news (renewed at "
        "every chunk): past it, the job is taken to be orphaned and re-enqueued.",
    )
    jobs_reap_seconds: int = Field(
        10, ge=1, le=60, description="How often the engine looks for orphaned and stuck jobs to re-enqueue."
    )
    jobs_max_queued_per_user: int = Field(
        10, ge=1, description="A user's jobs waiting to run; one more is refused with 429."
    )
    jobs_max_running_per_user: int = Field(
        2, ge=1, description="A user's jobs running at once; the rest wait their turn in the queue."
    )
    jobs_max_upload_bytes: int = Field(
        1_073_741_824,
        ge=1,
        description="Largest job upload (the raw file); past it, 413 while the body streams.",
    )
    jobs_max_rows: int = Field(
        10_000_000, ge=1, description="Most input rows in one job; past it, the job fails naming the limit."
    )
    jobs_retention_days: float = Field(
        7.0,
        gt=0,
        description="Days a finished job (its input and results) is kept; then a periodic task of "
        "the job engine deletes it.",
    )

    # --- pagination ---

    @field_validator("cors_origins", "trusted_hosts", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator(
        "rate_limit_auth_per_address",
        "rate_limit_auth_per_account",
        "rate_limit_per_user",
        "rate_limit_per_api_key",
    )
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from limits import parse  # noqa: PLC0415 - only validated here, used by app.http.ratelimit

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit such as '5/minute'") from None
        return value.strip()

    @model_validator(mode="after")
    def _shedding_below_backstop(self) -> Settings:
        if self.max_requests_in_flight >= self.limit_concurrency:
            raise SettingsError(
                "MAX_REQUESTS_IN_FLIGHT must be below LIMIT_CONCURRENCY, so the service sheds load with a "
                "503 problem before uvicorn's plain-text 503 takes over"
            )
        return self

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.environment != "production":
            return self
        key = self.secret_key.get_secret_value() if self.secret_key else ""
        if (
            len(key) < MIN_SECRET_KEY_LENGTH
            or key.lower() in WEAK_SECRET_KEYS
            or any(part in key.lower() for part in WEAK_SECRET_KEY_PARTS)
            or len(set(key)) < MIN_SECRET_KEY_DISTINCT_CHARACTERS
        ):
            raise SettingsError(
                f"SECRET_KEY must be set to a random string of at least {MIN_SECRET_KEY_LENGTH} "
                "characters when ENVIRONMENT=production"
            )
        if self.password_hash_memory_kib < 19_456 or self.password_hash_time_cost < 2:
            raise SettingsError(
                "PASSWORD_HASH_MEMORY_KIB and PASSWORD_HASH_TIME_COST are below OWASP's minimum "
                "(19456 KiB, 2) with ENVIRONMENT=production"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def migrate_on_startup(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    @property
    def jobs_embedded(self) -> bool:
        """Whether web processes run jobs themselves (see `jobs_embedded_worker`)."""
        return self.is_sqlite if self.jobs_embedded_worker is None else self.jobs_embedded_worker

    @property
    def show_docs(self) -> bool:
        return self.environment != "production" if self.docs_enabled is None else self.docs_enabled

    def signing_key(self) -> tuple[str, str | None]:
        """The HMAC key, and where it came from when SECRET_KEY was not set (for the start-up log).

        Outside production a missing key is generated once and kept in `dev_secret_key_file`
        (`data/.dev-secret-key`), so tokens survive a restart and every worker process of one
        machine shares the key.
        """
        if self.secret_key is not None:
            return self.secret_key.get_secret_value(), None
        path = self.dev_secret_key_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(48))
        self.secret_key = SecretStr(path.read_text().strip())
        return self.secret_key.get_secret_value(), str(path)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
