# Production image of fastapi-ml-service: a locked, dev-free virtualenv built with uv in one
# stage, copied into a clean image of the same base that runs as a non-root user.
#
#   make image                      # scripts/image.sh: docker or podman, local Debian base here
#   docker build --build-arg BASE_IMAGE=python:3.12-slim-bookworm -t fastapi-ml-service:local .
#   ... --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt   # behind a TLS-intercepting proxy
#
# Built and run for real by `make image-test` (tests/container/); see docs/deployment.md.
# No `# syntax=` line: BuildKit's built-in frontend (Docker 23+) and buildah both know
# RUN --mount, and a syntax image would have to be pulled from Docker Hub.

# Any image with python3 (3.11+) on PATH and useradd: python:3.x-slim, or the Debian bookworm base
# that scripts/image.sh makes with mmdebstrap where no registry is reachable. Both stages use it,
# so the venv's interpreter is at the same path in the runtime stage.
ARG BASE_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# uv pinned to the version that wrote uv.lock, so `--locked` reads the lock exactly as made.
# Installed from PyPI (not copied from ghcr.io/astral-sh/uv) so a build needs one index only.
ARG UV_VERSION=0.13.9

# Compile .pyc at install time (faster cold start, and the read-only root filesystem could not
# keep them anyway), copy rather than hard-link out of the cache mount, and never let uv fetch
# its own interpreter: the venv uses the base image's python3.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Copied, not bind-mounted: podman (buildah) does not key its layer cache on a bind mount's
# content, so a changed lock reused the old layer and the image lacked a new dependency (httpx).
COPY pyproject.toml uv.lock ./

# Dependencies only, from the lock; re-run only when pyproject.toml or uv.lock change. The project
# itself is not a package ([tool.uv] package = false), so nothing else to install.
# The third-party packages' own test suites (numpy, scipy, scikit-learn...: 64 MB) are dropped.
# The optional secret `ca` is a CA bundle for a network whose proxy intercepts TLS: it is mounted
# for this step only (/run/secrets/ca) and never written to a layer. uv and pip live in /opt/uv,
# which the runtime stage does not copy.
RUN --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca ]; then \
        export SSL_CERT_FILE=/run/secrets/ca PIP_CERT=/run/secrets/ca; \
    fi \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir --quiet "uv==${UV_VERSION}" \
    && /opt/uv/bin/uv sync --locked --no-dev --no-install-project \
    && find /app/.venv -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

# Fixed ids so Kubernetes' runAsUser/runAsGroup (deploy/k8s) match the image's user.
RUN groupadd --system --gid 10001 app \
    && useradd --no-log-init --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app

WORKDIR /app

# Code and venv stay root-owned (read-only to the service user); only data/ is writable, for the
# embedded SQLite (mount a volume there) and the dev secret key outside production.
COPY --from=builder /app/.venv /app/.venv
COPY alembic.ini ./
COPY migrations/ ./migrations/
COPY ml_models/ ./ml_models/
COPY app/ ./app/

RUN /app/.venv/bin/python -m compileall -q -j 0 app migrations \
    && install -d -o app -g app -m 0750 /app/data

# XDG_CACHE_HOME: onnxruntime keeps a telemetry device id under ~/.cache; with the home folder
# read-only it printed a non-JSON warning at every start. On the tmpfs it is written and forgotten.
ENV PATH="/app/.venv/bin:${PATH}" \
    VIRTUAL_ENV=/app/.venv \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production \
    HOST=0.0.0.0 \
    PORT=8000

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

EXPOSE 8000

# Readiness, not mere liveness: unhealthy while the database is unreachable or not migrated, or the
# models are not loaded. No curl in the image: the stdlib does the probe (urlopen raises, so exit
# 1, on refusal, timeout or any non-2xx answer). Kubernetes ignores this and uses its own probes.
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=3)"]

# uvicorn handles SIGTERM: stops accepting, lets accepted requests finish for
# TIMEOUT_GRACEFUL_SHUTDOWN seconds, runs the lifespan's shutdown, exits 0.
STOPSIGNAL SIGTERM

# Any other command of the CLI runs the same way: `... IMAGE python -m app.cli migrate`.
CMD ["python", "-m", "app.cli", "serve"]

# Last, so a new commit (scripts/image.sh passes its hash and date) rebuilds no other layer.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fastapi-ml-service" \
      org.opencontainers.image.description="Async FastAPI service serving ML models to authenticated users" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
