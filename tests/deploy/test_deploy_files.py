"""deploy/: the Grafana dashboard and alert rules use only metrics the bridge exports, the alert rules
behave as intended (promtool unit tests, when promtool is available), and docker-compose and
example.env name only real commands and settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import build_parser, cmd_api, cmd_sim, cmd_worker
from bridge.config import Settings
from bridge.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The metrics of docs/design.md ("Metrics") plus the dropped-pushes counter.
DESIGN_METRICS = {
    "bridge_devices", "bridge_sessions", "bridge_upstream_events_total", "bridge_decisions_total",
    "bridge_pushes_total", "bridge_push_latency_seconds_bucket", "bridge_push_queue_depth",
    "bridge_upstream_reconnects_total", "bridge_invalid_tokens_total", "bridge_worker_devices",
    "bridge_pushes_dropped_total",
}
METRIC_REF = re.compile(r"\bbridge_[a-zA-Z0-9_]+")
SETTING_REF = re.compile(r"\bBRIDGE_[A-Z0-9_]+")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name the bridge's metrics registry can produce."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names


def _settings_vars() -> set[str]:
    return {f"BRIDGE_{name.upper()}" for name in Settings.model_fields}


def _balanced(expr: str) -> bool:
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in depth:
            depth[ch] += 1
        elif ch in closing:
            depth[closing[ch]] -= 1
            if depth[closing[ch]] < 0:
                return False
    return all(v == 0 for v in depth.values())


# ---------------------------------------------------------------- Grafana


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return data


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_use_exported_metrics(dashboard: dict[str, Any], exported: set[str]) -> None:
    assert DESIGN_METRICS <= exported, "DESIGN metrics missing from bridge.metrics"
    used: set[str] = set()
    for target in _targets(dashboard):
        expr = target["expr"]
        assert _balanced(expr), expr
        refs = set(METRIC_REF.findall(expr))
        assert refs, f"query without a bridge metric: {expr}"
        assert refs <= exported, f"unknown metric(s) {refs - exported} in {expr}"
        assert 'job=~"$job"' in expr, f"query ignores the job variable: {expr}"
        used |= refs
    assert DESIGN_METRICS <= used, f"metrics without a panel: {DESIGN_METRICS - used}"


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "imkit-push-bridge" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["includeAll"] is True
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"] and p.get("description"), p["title"]
            assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])


# ---------------------------------------------------------------- alert rules


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alert_rules_shape(rules: list[dict[str, Any]], exported: set[str]) -> None:
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    # The four the issue asks for, at least.
    assert {"BridgeNoLiveSessions", "BridgeAuthFailureBurst", "BridgePushFailureRatioHigh", "BridgePushQueueBacklog"} <= set(names)
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        refs = set(METRIC_REF.findall(r["expr"]))
        assert refs and refs <= exported, f"{r['alert']}: unknown metric(s) {refs - exported}"
        assert _balanced(r["expr"]), r["alert"]


def test_alerts_are_documented(rules: list[dict[str, Any]]) -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    for r in rules:
        assert f"### {r['alert']}" in operations, f"docs/operations.md does not explain {r['alert']}"


def _promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


@pytest.mark.skipif(_promtool() is None, reason="promtool not available (set PROMTOOL or put it on PATH)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = str(_promtool())
    check = subprocess.run([promtool, "check", "rules", "prometheus-rules.yaml"], cwd=DEPLOY,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "prometheus-rules.test.yaml"], cwd=DEPLOY,
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_rule_unit_tests_cover_every_alert(rules: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load((DEPLOY / "prometheus-rules.test.yaml").read_text())
    firing = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert firing == {r["alert"] for r in rules}


# ---------------------------------------------------------------- docker compose and example.env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def test_compose_runs_redis_api_two_workers_and_the_simulators(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker-1", "worker-2", "imkit-sim", "apns-sim", "fcm-sim"}
    expected = {"api": cmd_api, "worker-1": cmd_worker, "worker-2": cmd_worker,
                "imkit-sim": cmd_sim, "apns-sim": cmd_sim, "fcm-sim": cmd_sim}
    parser = build_parser()
    for name, func in expected.items():
        svc = services[name]
        args = parser.parse_args(svc["command"])  # the real CLI accepts the command line
        assert args.func is func, name
        if func is cmd_sim:
            assert args.which == name.removesuffix("-sim")
        assert svc["image"] == "imkit-push-bridge:dev" and svc["build"]["context"] == ".."
        # One network namespace: the simulators' certificates are for 127.0.0.1 only.
        assert svc["network_mode"] == "service:redis", name
    assert (DEPLOY / services["api"]["build"]["context"] / services["api"]["build"]["dockerfile"]).is_file()


def test_compose_processes_do_not_collide(compose: dict[str, Any]) -> None:
    services = compose["services"]
    parser = build_parser()
    ports = [parser.parse_args(services["api"]["command"]).port]
    ports += [parser.parse_args(services[w]["command"]).metrics_port for w in ("worker-1", "worker-2")]
    ports += [parser.parse_args(services[s]["command"]).port for s in ("imkit-sim", "apns-sim", "fcm-sim")]
    assert len(ports) == len(set(ports)), ports
    published = {int(p.split(":")[-1]) for p in services["redis"]["ports"]}
    assert published == set(ports[:4]), "API, both workers' metrics and the IMKIT sim are published"
    worker_ids = {services[w]["environment"]["BRIDGE_WORKER_ID"] for w in ("worker-1", "worker-2")}
    assert len(worker_ids) == 2
    # In one namespace the image's health check could reach a neighbour: each checks its own port.
    for name, port in zip(("api", "worker-1", "worker-2"), ports[:3], strict=True):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in test, name


def test_compose_bridge_configuration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    known = _settings_vars()
    sims = {name: build_parser().parse_args(services[name]["command"]) for name in ("imkit-sim", "apns-sim", "fcm-sim")}
    for name in ("api", "worker-1", "worker-2"):
        svc = services[name]
        env = svc["environment"]
        assert set(env) <= known, set(env) - known
        settings = Settings.model_validate({k.removeprefix("BRIDGE_").lower(): v for k, v in env.items()})
        assert settings.store_is_redis and settings.secret_key is not None
        assert settings.imkit_url == f"http://127.0.0.1:{sims['imkit-sim'].port}"
        assert settings.fcm_url == f"http://127.0.0.1:{sims['fcm-sim'].port}"
        assert settings.fcm_credentials_file == f"{sims['fcm-sim'].state_dir}/fcm-service-account.json"
        assert f"{sims['apns-sim'].state_dir}/apns-sim.json" in " ".join(svc["entrypoint"])
        stop = int(svc["stop_grace_period"].removesuffix("s"))
        assert stop > settings.drain_timeout
        assert {d for d, c in svc["depends_on"].items() if c["condition"] == "service_healthy"} == {
            "redis", "imkit-sim", "apns-sim", "fcm-sim"}
        assert svc["env_file"] == ["example.env"]
    for name, args in sims.items():
        if name != "imkit-sim":
            assert args.host == "127.0.0.1", "the simulators' certificates and URLs name 127.0.0.1"
        assert "healthcheck" in services[name]


def test_example_env_names_only_real_settings() -> None:
    text = (DEPLOY / "example.env").read_text()
    named = set(SETTING_REF.findall(text))
    known = _settings_vars()
    assert named <= known, f"not settings: {named - known}"
    required = {f"BRIDGE_{n}" for n in (
        "HOST PORT IMKIT_URL IMKIT_CLIENT_KEY STORE SECRET_KEY METRICS_PORT ADMIN_TOKEN FOREGROUND_TTL "
        "APNS_KEY_FILE APNS_KEY_ID APNS_TEAM_ID APNS_TOPIC APNS_SANDBOX APNS_CERT_FILE APNS_HOST APNS_PORT "
        "APNS_CA_FILE FCM_CREDENTIALS_FILE FCM_URL FCM_CA_FILE PUSH_PROVIDER_FALLBACK PUSH_CONTENT LOG_LEVEL "
        "LOG_FORMAT DRAIN_TIMEOUT CONNECT_RATE").split()}
    assert required <= named, f"missing from example.env: {required - named}"
    # The active (uncommented) lines form a valid configuration and carry no secret.
    active = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    Settings.model_validate({k.removeprefix("BRIDGE_").lower(): v for k, v in active.items()})
    assert not {"BRIDGE_SECRET_KEY", "BRIDGE_ADMIN_TOKEN", "BRIDGE_IMKIT_CLIENT_KEY"} & active.keys()
