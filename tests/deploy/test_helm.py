"""The Helm chart, rendered by a real Helm (built by ``.ci/helm.sh``) and checked resource by resource.

Schema validation of the same renderings happens in ``.ci/helm.sh``; here we assert the properties
the chart promises: restricted security contexts, secrets only by reference, probes, resources,
drain-aware grace periods, and optional resources present exactly when switched on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "imkit-push-bridge"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
EMBEDDED = CHART / "ci" / "embedded-values.yaml"
KUBE_VERSION = "1.30.0"
SECRET_VARS = {"BRIDGE_SECRET_KEY", "BRIDGE_IMKIT_CLIENT_KEY", "BRIDGE_ADMIN_TOKEN"}
BRIDGE_COMPONENTS = {"api", "worker", "embedded"}

Doc = dict[str, Any]


def _helm_binary() -> Path:
    version = re.search(r"^HELM_VERSION=(\S+)$", (ROOT / ".ci" / "helm.sh").read_text(), re.M)
    assert version, "HELM_VERSION not found in .ci/helm.sh"
    tools = Path(os.environ.get("PUSH_BRIDGE_TOOLS") or Path.home() / ".cache" / "imkit-push-bridge")
    return tools / f"helm-{version.group(1)}" / "helm"


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = _helm_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"Helm not found at {binary}: run `bash .ci/helm.sh` first (it builds and caches Helm)")
    return binary


def _template(helm: Path, *values: Path, set_: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [str(helm), "template", "rel", str(CHART), "--namespace", "chat", "--kube-version", KUBE_VERSION]
    for v in values:
        cmd += ["-f", str(v)]
    for s in set_:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def render(helm: Path, *values: Path, set_: tuple[str, ...] = ()) -> list[Doc]:
    result = _template(helm, *values, set_=set_)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render_error(helm: Path, *values: Path, set_: tuple[str, ...] = ()) -> str:
    result = _template(helm, *values, set_=set_)
    assert result.returncode != 0, "rendering should have failed"
    return result.stderr


@pytest.fixture(scope="module")
def default(helm: Path) -> list[Doc]:
    return render(helm)


@pytest.fixture(scope="module")
def all_on(helm: Path) -> list[Doc]:
    return render(helm, ALL_ON)


@pytest.fixture(scope="module")
def embedded(helm: Path) -> list[Doc]:
    return render(helm, EMBEDDED)


@pytest.fixture(scope="module", params=["default", "all_on", "embedded"])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    docs: list[Doc] = request.getfixturevalue(request.param)
    return docs


# ---------------------------------------------------------------- helpers


def kinds(docs: list[Doc]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def component(doc: Doc) -> str:
    labels = doc["metadata"].get("labels", {})
    return str(labels.get("app.kubernetes.io/component", ""))


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(what, pod spec) of every workload and bare pod."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def bridge_deployments(docs: list[Doc]) -> list[Doc]:
    return [d for d in of_kind(docs, "Deployment") if component(d) in BRIDGE_COMPONENTS]


def container(deployment: Doc) -> Doc:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def configmap_data(docs: list[Doc]) -> dict[str, str]:
    (cm,) = of_kind(docs, "ConfigMap")
    return dict(cm["data"])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- security


def test_every_pod_and_container_is_restricted(rendered: list[Doc]) -> None:
    specs = list(pod_specs(rendered))
    assert specs
    for what, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, what
        assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0, what
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert spec["automountServiceAccountToken"] is False, what
        for c in spec["containers"] + spec.get("initContainers", []):
            csc = c["securityContext"]
            where = f"{what} container {c['name']}"
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["readOnlyRootFilesystem"] is True, where
            assert csc["capabilities"] == {"drop": ["ALL"]}, where
            assert csc.get("privileged", False) is False, where
            assert csc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert csc.get("runAsNonRoot", psc["runAsNonRoot"]) is True, where
            # A read-only root needs a writable /tmp, and it must be an emptyDir.
            volumes = {v["name"]: v for v in spec["volumes"]}
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], where


def test_bridge_pods_run_as_the_image_uid(rendered: list[Doc]) -> None:
    for d in bridge_deployments(rendered):
        psc = d["spec"]["template"]["spec"]["securityContext"]
        assert (psc["runAsUser"], psc["runAsGroup"], psc["fsGroup"]) == (10001, 10001, 10001)


def test_no_secret_values_are_rendered(rendered: list[Doc]) -> None:
    assert of_kind(rendered, "Secret") == []
    data = configmap_data(rendered)
    assert not SECRET_VARS & data.keys()
    for d in bridge_deployments(rendered):
        for var in container(d)["env"]:
            if var["name"] in SECRET_VARS:
                assert "value" not in var, var["name"]
                assert set(var["valueFrom"]) == {"secretKeyRef"}, var["name"]


def test_secrets_come_only_from_the_existing_secret(all_on: list[Doc], default: list[Doc]) -> None:
    for docs, secret in ((all_on, "bridge-credentials"), (default, "rel-imkit-push-bridge")):
        for d in bridge_deployments(docs):
            spec = d["spec"]["template"]["spec"]
            refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container(d)["env"] if "secretKeyRef" in v.get("valueFrom", {})}
            assert set(refs) == SECRET_VARS
            assert {r["name"] for r in refs.values()} == {secret}
            assert refs["BRIDGE_SECRET_KEY"] == {"name": secret, "key": "secret-key"}
            assert refs["BRIDGE_ADMIN_TOKEN"]["optional"] is True
            for v in spec["volumes"]:
                if "secret" in v:
                    assert v["secret"]["secretName"] == secret
            for m in container(d)["volumeMounts"]:
                if m["name"] == "secret-files":
                    assert m["readOnly"] is True


def test_credential_files_are_mounted_where_the_config_points(all_on: list[Doc], embedded: list[Doc]) -> None:
    for docs, expected in (
        (all_on, {"BRIDGE_APNS_KEY_FILE": "apns-key.p8", "BRIDGE_FCM_CREDENTIALS_FILE": "fcm-credentials.json"}),
        (embedded, {"BRIDGE_APNS_CERT_FILE": "apns-cert.pem", "BRIDGE_FCM_CREDENTIALS_FILE": "fcm-credentials.json"}),
    ):
        data = configmap_data(docs)
        for d in bridge_deployments(docs):
            spec = d["spec"]["template"]["spec"]
            (volume,) = [v for v in spec["volumes"] if v["name"] == "secret-files"]
            (mount,) = [m for m in container(d)["volumeMounts"] if m["name"] == "secret-files"]
            items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
            assert set(items) == set(expected.values())
            for var, path in expected.items():
                assert data[var] == f"{mount['mountPath']}/{path}"
                assert items[path] == path  # the default key names equal the file names
    assert "BRIDGE_APNS_KEY_ID" in configmap_data(all_on)


def test_no_secret_files_without_providers(default: list[Doc]) -> None:
    for d in bridge_deployments(default):
        assert [v["name"] for v in d["spec"]["template"]["spec"]["volumes"]] == ["tmp"]
    assert not any(k.startswith(("BRIDGE_APNS", "BRIDGE_FCM")) for k in configmap_data(default))


def test_store_url_can_come_from_the_secret(helm: Path) -> None:
    docs = render(helm, set_=("secrets.keys.storeUrl=redis-url",))
    assert "BRIDGE_STORE" not in configmap_data(docs)
    for d in bridge_deployments(docs):
        (store,) = [v for v in container(d)["env"] if v["name"] == "BRIDGE_STORE"]
        assert store["valueFrom"]["secretKeyRef"] == {"name": "rel-imkit-push-bridge", "key": "redis-url"}


def test_secret_variables_cannot_be_passed_as_plain_config(helm: Path) -> None:
    err = render_error(helm, set_=("config.extraEnv.BRIDGE_ADMIN_TOKEN=oops",))
    assert "BRIDGE_ADMIN_TOKEN" in err or "extraEnv" in err
    assert "oops" not in err


# ---------------------------------------------------------------- workloads


def test_distributed_default_runs_api_and_workers_on_redis(default: list[Doc]) -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind(default, "Deployment")}
    assert set(deployments) == {"rel-imkit-push-bridge-api", "rel-imkit-push-bridge-worker"}
    assert container(deployments["rel-imkit-push-bridge-api"])["args"] == ["api"]
    assert container(deployments["rel-imkit-push-bridge-worker"])["args"] == ["worker"]
    data = configmap_data(default)
    assert data["BRIDGE_HOST"] == "0.0.0.0"
    assert data["BRIDGE_STORE"].startswith("redis://")
    worker_env = {v["name"]: v for v in container(deployments["rel-imkit-push-bridge-worker"])["env"]}
    assert worker_env["BRIDGE_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for d in deployments.values():
        assert d["spec"]["replicas"] == 2
        assert container(d)["envFrom"] == [{"configMapRef": {"name": "rel-imkit-push-bridge"}}]


def test_embedded_mode_is_one_serve_pod_on_sqlite(embedded: list[Doc]) -> None:
    (d,) = of_kind(embedded, "Deployment")
    assert component(d) == "embedded"
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["strategy"] == {"type": "Recreate"}
    assert container(d)["args"] == ["serve"]
    assert configmap_data(embedded)["BRIDGE_STORE"] == "sqlite:////data/bridge.db"
    spec = d["spec"]["template"]["spec"]
    (mount,) = [m for m in container(d)["volumeMounts"] if m["mountPath"] == "/data"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    (pvc,) = of_kind(embedded, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["storageClassName"] == "standard"
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert of_kind(embedded, kind) == []
    assert [s["metadata"]["name"] for s in of_kind(embedded, "Service")] == ["rel-imkit-push-bridge"]


def test_embedded_without_persistence_uses_an_emptydir(helm: Path) -> None:
    docs = render(helm, set_=("mode=embedded", "embedded.persistence.enabled=false"))
    assert of_kind(docs, "PersistentVolumeClaim") == []
    (d,) = of_kind(docs, "Deployment")
    volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_probes(rendered: list[Doc]) -> None:
    for d in bridge_deployments(rendered):
        c = container(d)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
        assert live["path"] == "/healthz"
        if component(d) == "worker":
            # A worker serves /metrics, /healthz and /readyz on BRIDGE_METRICS_PORT only.
            assert ports == {"metrics": 9108}
            assert live["port"] == ready["port"] == "metrics"
        else:
            assert ports == {"http": 8080}
            assert live["port"] == ready["port"] == "http"
        assert ready["path"] == "/readyz"
        for probe in (c["livenessProbe"], c["readinessProbe"]):
            assert probe["timeoutSeconds"] >= 1 and probe["failureThreshold"] >= 1


def test_resources_everywhere(rendered: list[Doc]) -> None:
    for what, spec in pod_specs(rendered):
        for c in spec["containers"]:
            res = c["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[part]), f"{what} {c['name']} {part}"


def test_grace_period_exceeds_the_drain_timeout(rendered: list[Doc]) -> None:
    drain = float(configmap_data(rendered)["BRIDGE_DRAIN_TIMEOUT"])
    for d in bridge_deployments(rendered):
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain, d["metadata"]["name"]


def test_grace_period_not_above_drain_timeout_is_refused(helm: Path) -> None:
    err = render_error(helm, set_=("config.drainTimeout=30", "api.terminationGracePeriodSeconds=60",
                                   "worker.terminationGracePeriodSeconds=30"))
    assert "worker.terminationGracePeriodSeconds (30) must exceed config.drainTimeout (30)" in err
    err = render_error(helm, set_=("mode=embedded", "embedded.terminationGracePeriodSeconds=5"))
    assert "embedded.terminationGracePeriodSeconds (5) must exceed config.drainTimeout (10)" in err
    # Only the grace periods of the pods that run count.
    render(helm, set_=("mode=embedded", "worker.terminationGracePeriodSeconds=5"))


def test_selectors_select_their_pods(rendered: list[Doc]) -> None:
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in of_kind(rendered, "Deployment")}
    for d in of_kind(rendered, "Deployment"):
        assert matches(d["spec"]["selector"]["matchLabels"], pods[d["metadata"]["name"]])
    for svc in of_kind(rendered, "Service"):
        selected = [n for n, labels in pods.items() if matches(svc["spec"]["selector"], labels)]
        assert len(selected) == 1, svc["metadata"]["name"]
        target_ports = {p["targetPort"] for p in svc["spec"]["ports"]}
        deployment = next(d for d in of_kind(rendered, "Deployment") if d["metadata"]["name"] == selected[0])
        assert target_ports <= {p["name"] for p in container(deployment)["ports"]}


def test_config_checksum_rolls_pods(helm: Path, default: list[Doc]) -> None:
    changed = render(helm, set_=("config.logLevel=DEBUG",))

    def checksums(docs: list[Doc]) -> set[str]:
        return {d["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for d in bridge_deployments(docs)}

    assert len(checksums(default)) == 1 and checksums(default) != checksums(changed)


# ---------------------------------------------------------------- optional resources


def test_pdbs_cover_api_and_workers(default: list[Doc]) -> None:
    pdbs = {component(p): p for p in of_kind(default, "PodDisruptionBudget")}
    assert set(pdbs) == {"api", "worker"}
    for comp, pdb in pdbs.items():
        assert pdb["spec"]["maxUnavailable"] == 1
        (target,) = [d for d in bridge_deployments(default) if component(d) == comp]
        assert matches(pdb["spec"]["selector"]["matchLabels"], target["spec"]["template"]["metadata"]["labels"])


def test_hpa_only_when_enabled(default: list[Doc], all_on: list[Doc]) -> None:
    assert of_kind(default, "HorizontalPodAutoscaler") == []
    (hpa,) = of_kind(all_on, "HorizontalPodAutoscaler")
    api = named(all_on, "Deployment", "rel-imkit-push-bridge-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rel-imkit-push-bridge-api"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    # The HPA owns the replica count: a fixed one would fight it on every upgrade.
    assert "replicas" not in api["spec"]


def test_optional_resources_absent_by_default(default: list[Doc]) -> None:
    assert kinds(default) == sorted(
        ["ConfigMap", "Deployment", "Deployment", "PodDisruptionBudget", "PodDisruptionBudget", "Pod",
         "Service", "Service", "ServiceAccount"]
    )
    assert all(component(d) != "redis" for d in default)


def test_service_monitor_scrapes_api_and_workers(all_on: list[Doc]) -> None:
    (sm,) = of_kind(all_on, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    selected = [s for s in of_kind(all_on, "Service") if matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert {component(s) for s in selected} == {"api", "worker"}
    ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
    assert {e["port"] for e in sm["spec"]["endpoints"]} == ports == {"http", "metrics"}
    assert {e["path"] for e in sm["spec"]["endpoints"]} == {"/metrics"}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["chat"]}
    # A worker that is not ready is still scraped.
    (worker_svc,) = [s for s in selected if component(s) == "worker"]
    assert worker_svc["spec"]["clusterIP"] == "None" and worker_svc["spec"]["publishNotReadyAddresses"] is True


def test_network_policies(all_on: list[Doc]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(all_on, "NetworkPolicy")}
    assert set(policies) == {"rel-imkit-push-bridge", "rel-imkit-push-bridge-redis"}
    bridge = policies["rel-imkit-push-bridge"]
    assert bridge["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = {p["port"] for rule in bridge["ingress"] for p in rule["ports"]}
    assert ingress_ports == {8080, 9108}
    for rule in bridge["ingress"]:
        assert rule["from"], "all-on restricts every ingress rule to given peers"
    test_pod = next(d for d in of_kind(all_on, "Pod"))
    api_rule = next(r for r in bridge["ingress"] if [p["port"] for p in r["ports"]] == [8080])
    assert any(matches(peer.get("podSelector", {}).get("matchLabels", {"-": "-"}), test_pod["metadata"]["labels"]) for peer in api_rule["from"])
    egress_ports = {p["port"] for rule in bridge["egress"] for p in rule.get("ports", [])}
    assert {53, 6379, 443, 2197, 3000} <= egress_ports
    redis = policies["rel-imkit-push-bridge-redis"]
    assert redis["egress"] == []
    assert [p["port"] for p in redis["ingress"][0]["ports"]] == [6379]


def test_metrics_peers_never_open_the_api_port_to_everyone(helm: Path) -> None:
    # An empty metricsFrom (the default: everyone) must not cancel apiIngressFrom: /admin is on 8080.
    docs = render(
        helm,
        set_=(
            "networkPolicy.enabled=true",
            "networkPolicy.apiIngressFrom[0].namespaceSelector.matchLabels.team=edge",
        ),
    )
    (policy,) = [p["spec"] for p in of_kind(docs, "NetworkPolicy") if component(p) != "redis"]
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if 8080 in ports:
            assert rule.get("from"), f"8080 open to everyone through {rule}"
        else:
            assert ports == {9108}


def test_metrics_peers_may_scrape_the_api(all_on: list[Doc]) -> None:
    (policy,) = [p["spec"] for p in of_kind(all_on, "NetworkPolicy") if p["metadata"]["name"] == "rel-imkit-push-bridge"]
    api_rule = next(r for r in policy["ingress"] if [p["port"] for p in r["ports"]] == [8080])
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert monitoring in api_rule["from"]
    metrics_rule = next(r for r in policy["ingress"] if [p["port"] for p in r["ports"]] == [9108])
    assert metrics_rule["from"] == [monitoring]


def test_evaluation_redis_only_when_enabled(all_on: list[Doc]) -> None:
    redis = [d for d in all_on if component(d) == "redis"]
    assert sorted(d["kind"] for d in redis) == ["Deployment", "NetworkPolicy", "Service"]
    assert configmap_data(all_on)["BRIDGE_STORE"] == "redis://rel-imkit-push-bridge-redis:6379/0"
    deployment = named(all_on, "Deployment", "rel-imkit-push-bridge-redis")
    assert deployment["spec"]["replicas"] == 1
    c = container(deployment)
    assert "--save" in c["args"] and c["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]


def test_redis_and_store_secret_are_exclusive(helm: Path) -> None:
    err = render_error(helm, set_=("redis.enabled=true", "secrets.keys.storeUrl=redis-url"))
    assert "not both" in err


def test_schema_rejects_unknown_and_invalid_values(helm: Path) -> None:
    assert "additional properties" in render_error(helm, set_=("worker.replicass=3",)).lower()
    assert "mode" in render_error(helm, set_=("mode=cluster",))
    assert "imkitUrl" in render_error(helm, set_=("config.imkitUrl=chat.example.com",))


def test_apns_needs_its_identifiers(helm: Path) -> None:
    assert "apns.topic" in render_error(helm, set_=("apns.enabled=true",))
    assert "apns.keyId" in render_error(helm, set_=("apns.enabled=true", "apns.topic=com.example.chat"))


# ---------------------------------------------------------------- helm test


def test_helm_test_hook_calls_readyz(rendered: list[Doc]) -> None:
    (pod,) = of_kind(rendered, "Pod")
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    assert pod["spec"]["restartPolicy"] == "Never"
    (c,) = pod["spec"]["containers"]
    assert c["command"][:2] == ["python", "-c"]
    (service,) = [s for s in of_kind(rendered, "Service") if s["metadata"]["name"] == "rel-imkit-push-bridge"]
    port = service["spec"]["ports"][0]["port"]
    assert f'"http://rel-imkit-push-bridge:{port}/readyz"' in c["command"][2]
    compile(c["command"][2], "helm-test", "exec")


# ---------------------------------------------------------------- values documentation


def test_every_value_is_commented_and_in_the_schema() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    path: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        path = [(d, k) for d, k in path if d < indent] + [(indent, key)]
        keys = [k for _, k in path]
        if keys[0] in ("redis", "api", "worker", "embedded", "helmTest") and "resources" in keys[:-1]:
            continue  # Kubernetes resource quantities, described by their parent
        node = schema
        for k in keys:
            assert k in node.get("properties", {}), f"{'.'.join(keys)} is not in values.schema.json"
            node = node["properties"][k]
        assert lines[i - 1].strip().startswith("#"), f"values.yaml: {'.'.join(keys)} has no comment"
    top = {k for k in schema["properties"] if k != "global"}
    assert top == {m.group(1) for line in lines if (m := re.match(r"^([A-Za-z]\w*):", line))}
