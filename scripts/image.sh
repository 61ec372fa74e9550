#!/usr/bin/env bash
# Builds the container image with whichever engine the machine has (docker, else podman): the
# same command everywhere, nothing pulled from a registry unless BASE_IMAGE names one.
#
#   scripts/image.sh build    # `make image`: the local base if needed, then the image
#   scripts/image.sh base     # only the local base image (Debian bookworm, made with mmdebstrap)
#   scripts/image.sh env      # ENGINE=..., IMAGE=..., CONTAINERS_CONF=... for other tools
#
# Environment (all optional):
#   IMAGE            tag to build                      (fastapi-ml-service:local)
#   BASE_IMAGE       image the Dockerfile builds FROM  (the local base below; e.g.
#                    python:3.12-slim-bookworm where a registry is reachable)
#   LOCAL_BASE       tag of the mmdebstrap-made base   (localhost/fastapi-ml-service-base:bookworm)
#   CONTAINER_ENGINE docker or podman                  (docker if its daemon answers, else podman)
#   BUILD_CA         CA bundle passed to the build as the secret `ca`, for a network whose proxy
#                    intercepts TLS (/etc/ssl/certs/ca-certificates.crt when it exists; set it
#                    empty to pass none). Used by the RUN that installs from PyPI, never stored in
#                    the image.
#
# With podman, CONTAINERS_CONF defaults to scripts/podman-containers.conf (runc, explicit
# ulimits): on hosts like this one crun refuses the cgroup set-up and root cannot raise limits.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOCAL_BASE=${LOCAL_BASE:-localhost/fastapi-ml-service-base:bookworm}
IMAGE=${IMAGE:-fastapi-ml-service:local}
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
BUILD_CA=${BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}

detect_engine() {
    if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
        echo "$CONTAINER_ENGINE"
    elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        echo docker
    elif command -v podman >/dev/null 2>&1; then
        echo podman
    else
        echo "image: no container engine (install docker, or podman runc: apt-get install podman runc mmdebstrap)" >&2
        return 1
    fi
}

ENGINE=$(detect_engine)
if [[ "$ENGINE" == podman && -z "${CONTAINERS_CONF:-}" ]]; then
    export CONTAINERS_CONF="$PWD/scripts/podman-containers.conf"
fi

has_image() {
    "$ENGINE" image inspect "$1" >/dev/null 2>&1
}

# A minimal Debian bookworm with its python3 (3.11), from Debian's mirrors and security updates:
# the stand-in for python:3.x-slim where no registry is reachable. About 30 s.
make_base() {
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        echo "image: $LOCAL_BASE is missing and mmdebstrap is not installed" \
             "(apt-get install mmdebstrap, or set BASE_IMAGE=python:3.12-slim-bookworm)" >&2
        return 1
    fi
    local started
    started=$(date +%s)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "== base image $LOCAL_BASE (mmdebstrap bookworm minbase + python3)"
    # No docs, man pages or translations: nothing in the image reads them.
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$work/rootfs.tar" \
        "deb $DEBIAN_MIRROR/debian bookworm main" \
        "deb $DEBIAN_MIRROR/debian bookworm-updates main" \
        "deb $DEBIAN_MIRROR/debian-security bookworm-security main"
    # Only the environment a python:3.x-slim image would give; `import` sets no PATH otherwise.
    "$ENGINE" import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$work/rootfs.tar" "$LOCAL_BASE" >/dev/null
    echo "== base image made in $(($(date +%s) - started)) s"
}

build() {
    if [[ "$BASE_IMAGE" == "$LOCAL_BASE" ]] && ! has_image "$LOCAL_BASE"; then
        make_base
    fi
    local -a args=(--network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
    # OCI labels: the commit and its date (not the build's), and the project's version.
    if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
        args+=(--build-arg "REVISION=$(git rev-parse HEAD)"
               --build-arg "CREATED=$(git log -1 --format=%cI HEAD)")
    fi
    args+=(--build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)")
    if [[ -n "$BUILD_CA" && -r "$BUILD_CA" ]]; then
        args+=(--secret "id=ca,src=$BUILD_CA")
    fi
    if [[ "$ENGINE" == podman ]]; then
        # docker format: the OCI image format has no HEALTHCHECK, podman would drop it.
        args+=(--format docker)
        # The local base exists only in local storage: never ask a registry for it.
        if [[ "$BASE_IMAGE" == "$LOCAL_BASE" ]]; then args+=(--pull=never); fi
    fi
    local started
    started=$(date +%s)
    echo "== $ENGINE build $IMAGE (FROM $BASE_IMAGE)"
    DOCKER_BUILDKIT=1 "$ENGINE" build "${args[@]}" -f Dockerfile .
    echo "== $IMAGE built in $(($(date +%s) - started)) s," \
         "$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE") bytes"
}

case "${1:-build}" in
    build) build ;;
    base) has_image "$LOCAL_BASE" && echo "image: $LOCAL_BASE exists" || make_base ;;
    env)
        echo "ENGINE=$ENGINE"
        echo "IMAGE=$IMAGE"
        echo "CONTAINERS_CONF=${CONTAINERS_CONF:-}"
        ;;
    *)
        echo "usage: $0 [build|base|env]" >&2
        exit 2
        ;;
esac
