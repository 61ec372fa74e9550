# syntax=docker/dockerfile:1
# Production image of fastapi-ml-service: a locked, dev-free virtualenv built with uv in one
# stage, copied into a clean slim image that runs as a non-root user.
# Build:  docker build -t fastapi-ml-service:local .
# Checked by scripts/check_deploy.sh (hadolint); it has never been built on the dev machine.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# uv pinned to the version that wrote uv.lock, so `--locked` reads the lock exactly as made.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

COPY --from=uv /uv /uvx /bin/

# Compile .pyc at install time (faster cold start), copy rather than hard-link out of the cache
# mount, and never let uv fetch its own interpreter: the venv must use the image's python, the
# same binary the runtime stage has at the same path.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# Dependencies only, from the lock; re-run only when pyproject.toml or uv.lock change.
# The project itself is not a package ([tool.uv] package = false), so nothing else to install.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-dev --no-install-project

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# Fixed ids so Kubernetes' runAsUser/runAsGroup (deploy/k8s) match the image's user.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app

WORKDIR /app

# Code and venv stay root-owned (read-only to the service user); only data/ is writable, for the
# embedded-SQLite fallback and the dev secret key when no DATABASE_URL/SECRET_KEY is given.
COPY --from=builder /app/.venv /app/.venv
COPY alembic.ini ./
COPY migrations/ ./migrations/
COPY ml_models/ ./ml_models/
COPY app/ ./app/

RUN /app/.venv/bin/python -m compileall -q -j 0 app migrations \
    && install -d -o app -g app -m 0750 /app/data

ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000 \
    AUTO_MIGRATE=false

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

EXPOSE 8000

# No curl in slim: the stdlib does the probe. urlopen raises (exit 1) on refusal, timeout or
# any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

# uvicorn's supervisor handles SIGTERM: stops accepting, lets each worker drain for
# TIMEOUT_GRACEFUL_SHUTDOWN seconds, then exits.
STOPSIGNAL SIGTERM

CMD ["python", "-m", "app.cli", "serve"]
