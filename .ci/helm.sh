#!/usr/bin/env bash
# Checks the Helm chart for real: builds a pinned Helm (cached), lints the chart, renders it with
# the default values and with every option switched on, and validates every rendered manifest
# against the Kubernetes JSON schemas of a pinned Kubernetes version. Exits non-zero on any failure.
#
#   bash .ci/helm.sh
#
# Environment:
#   PUSH_BRIDGE_TOOLS  cache of built tools (default ~/.cache/imkit-push-bridge); Helm lands in
#                      $PUSH_BRIDGE_TOOLS/helm-<version>/helm, where tests/deploy/test_helm.py finds it.
#   PYTHON             interpreter with kubernetes-validate installed (default .venv/bin/python).
set -euo pipefail

HELM_VERSION=v3.18.6
# Kubernetes version the manifests are validated against (kubernetes-validate schemas).
KUBE_VERSION=1.30.0
# Kubernetes minor of Helm's own k8s.io modules (client-go v0.33 in Helm v3.18), stamped into the
# binary like the official release build does; `go install` alone would leave Helm's default 1.20.
HELM_K8S_MINOR=33

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
chart=$root/helm/imkit-push-bridge
tools=${PUSH_BRIDGE_TOOLS:-$HOME/.cache/imkit-push-bridge}
helm_dir=$tools/helm-$HELM_VERSION
helm=$helm_dir/helm
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi

log() { printf '[helm.sh] %s\n' "$*"; }

# The Go toolchain's usual place, in case PATH lacks it (non-login shells).
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
    PATH=/usr/local/go/bin:$PATH
fi
if ! "$PYTHON" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
    log "$PYTHON lacks kubernetes-validate: pip install -e '.[dev]'"
    exit 1
fi

install_helm() {
    command -v go >/dev/null || { log "go is not installed: needed to build Helm"; return 1; }
    local build started ldflags
    build=$(mktemp -d)
    started=$(date +%s)
    ldflags="-s -w"
    ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in pkg/chartutil pkg/lint/rules; do
        ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    log "building Helm $HELM_VERSION with go install (first run only)"
    GOBIN=$build CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mkdir -p "$helm_dir"
    # Move into place only once complete, so an interrupted build never leaves a broken cache.
    mv -f "$build/helm" "$helm.partial"
    mv -f "$helm.partial" "$helm"
    rmdir "$build"
    log "built $helm in $(( $(date +%s) - started ))s"
}

if [[ ! -x "$helm" ]]; then
    install_helm
else
    log "using cached $helm"
fi
"$helm" version --short

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Value sets: chart defaults; every option on (distributed); embedded mode with its options on.
declare -A value_sets=(
    [default]=""
    [all-on]="$chart/ci/all-on-values.yaml"
    [embedded]="$chart/ci/embedded-values.yaml"
)

log "helm lint (default values)"
"$helm" lint "$chart" --kube-version "$KUBE_VERSION"
for name in all-on embedded; do
    log "helm lint --strict ($name)"
    "$helm" lint --strict "$chart" --kube-version "$KUBE_VERSION" -f "${value_sets[$name]}"
done

for name in "${!value_sets[@]}"; do
    args=(template ci-release "$chart" --namespace ci --kube-version "$KUBE_VERSION")
    [[ -n "${value_sets[$name]}" ]] && args+=(-f "${value_sets[$name]}")
    log "helm template ($name) -> $name.yaml"
    "$helm" "${args[@]}" > "$out/$name.yaml"
done

log "kubernetes-validate --strict against Kubernetes $KUBE_VERSION"
"$PYTHON" - "$KUBE_VERSION" "$out"/*.yaml <<'PY'
"""Validate rendered manifests; unlike the kubernetes-validate CLI, a missing schema is an error.

kubernetes-validate only knows built-in kinds. The one custom resource the chart renders, the
Prometheus Operator ServiceMonitor, is checked against the subset of its CRD schema that the
chart uses, with additionalProperties false, so a misspelt field fails here too.
"""
import sys

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

_STR = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STR}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": _STR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}},
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": _STR,
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        },
                    },
                },
            },
        },
    },
}
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR}

version, files = sys.argv[1], sys.argv[2:]
failures = 0
for path in files:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        print(f"ERROR {path}: rendered no resources")
        failures += 1
    for doc in docs:
        what = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        custom = CUSTOM.get((doc.get("apiVersion"), doc.get("kind")))
        try:
            if custom is not None:
                jsonschema.validate(doc, custom)
                print(f"ok   {what} (custom resource, chart's subset schema)")
            else:
                kubernetes_validate.validate(doc, version, strict=True)
                print(f"ok   {what}")
        except SchemaNotFoundError as exc:
            print(f"ERROR {what}: {exc.message}")
            failures += 1
        except jsonschema.ValidationError as exc:
            location = ".".join(str(p) for p in exc.absolute_path)
            print(f"ERROR {what}: {location}: {exc.message}")
            failures += 1
if failures:
    print(f"{failures} manifest(s) failed validation")
    sys.exit(1)
PY
log "chart OK"
