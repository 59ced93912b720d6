"""deploy/prometheus and deploy/grafana: promtool checks and unit-tests the rules; every metric the
rules and the Grafana board name is one the real gateway exports; and a real Prometheus (Debian's
`prometheus`) scraping a running gateway evaluates the recording rules, every board panel's
queries return data, and the alerts the scenario causes are pending or firing.

The gateway's scenario makes every series exist that only appears on an event: two routes with
rollouts (one rolled back, one promoted through the admin API), a version that fails to load, a
control plane that cannot be reached (sync failures), requests that succeed and fail, and truths
sent for the predictions of a route that keeps them (the accuracy series), a shadow route, the drift
profiler on, uploads that stall until the in-flight budget refuses one, and a connection that sends
nothing. Every metric family the README names must then be exported, or be listed (with why) among
those this scenario cannot make.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from localpod import BIN_DIR, REPO, free_port, http_get  # noqa: E402

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
BOARD = REPO / "deploy" / "grafana" / "modelgate.json"
# Metric names a query may use that no gateway exports: Prometheus' own per target.
PROMETHEUS_SERIES = {"up"}
# Series a gateway exports only once its control plane has evaluated drift (a reference, windows
# of reported traffic, an evaluation round): the scenario here does not get that far, so these
# are checked against src/metrics.rs's names instead of a scrape, and their queries are not
# required to return data. Keep this list to what cannot be produced here.
NEEDS_A_DRIFT_EVALUATION = {"modelgate_drift_status", "modelgate_drift_statistic"}
# The gateway's `server.max_inflight_bytes` here.
INFLIGHT_LIMIT = 256 * 1024


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: scripts/setup.sh installs Debian's prometheus package")
    return subprocess.run(["promtool", *args], capture_output=True, text=True)


def rules() -> list[dict]:
    return [rule for f in RULE_FILES for group in yaml.safe_load(f.read_text())["groups"] for rule in group["rules"]]


def board_queries() -> list[str]:
    """Every PromQL string of the board: panel targets and template variable queries."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(BOARD.read_text()))
    return found


def metric_names(promql: str) -> set[str]:
    """Metric names in a PromQL expression (label names, functions and keywords are not)."""
    without_strings = re.sub(r'"[^"]*"', '""', promql)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_grouping = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_matchers)
    # An identifier not inside another, followed by a selector, a range, an operator or the end.
    identifier = r"(?<![\w:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?=\s*(?:\{|\[|\)|$|\s|,|/|\*|>|<|=|!))"
    tokens = set(re.findall(identifier, without_grouping))
    return {t for t in tokens if t.startswith(("modelgate", "nv_")) or ":" in t or t in PROMETHEUS_SERIES}


# === promtool ===


def test_promtool_checks_the_rules():
    assert RULE_FILES
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    assert TEST_FILES
    result = promtool("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_prometheus_config():
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_unit_test():
    alerts = {r["alert"] for r in rules() if "alert" in r}
    records = {r["record"] for r in rules() if "record" in r}
    tested_alerts, tested_exprs = set(), set()
    for f in TEST_FILES:
        for test in yaml.safe_load(f.read_text())["tests"]:
            tested_alerts |= {t["alertname"] for t in test.get("alert_rule_test", [])}
            tested_exprs |= {t["expr"] for t in test.get("promql_expr_test", [])}
    assert alerts - tested_alerts == set(), "alerts without a promtool test"
    assert records - tested_exprs == set(), "recording rules without a promtool test"


# === The real gateway ===


class Gateway:
    def __init__(self, root: Path):
        self.root = root
        self.http = free_port()
        self.metrics = free_port()
        self.admin = free_port()
        self.token = "monitoring-test-token-0123456789"
        repo = root / "models"
        onnx = REPO / "models" / "simple" / "1" / "model.onnx"
        config = (REPO / "models" / "simple" / "config.pbtxt").read_text()
        for name in ("simple", "simple_b", "shadowed"):
            for version in (1, 2):
                (repo / name / str(version)).mkdir(parents=True)
                shutil.copy(onnx, repo / name / str(version) / "model.onnx")
            text = config.replace('name: "simple"', f'name: "{name}"')
            (repo / name / "config.pbtxt").write_text(text + "version_policy: { all { } }\n")
        # A queue of one that waits half a second for a batch: concurrent requests find it full.
        (repo / "queued" / "1").mkdir(parents=True)
        shutil.copy(onnx, repo / "queued" / "1" / "model.onnx")
        queued = config.replace('name: "simple"', 'name: "queued"').replace(
            "dynamic_batching { }",
            "dynamic_batching { max_queue_delay_microseconds: 500000 preferred_batch_size: [ 8 ] "
            "default_queue_policy { max_queue_size: 1 } }",
        )
        assert queued != config
        (repo / "queued" / "config.pbtxt").write_text(queued)
        (repo / "broken" / "1").mkdir(parents=True)
        (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
        (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nplatform: "onnxruntime_onnx"\n')
        (root / "token").write_text(self.token)
        rollout = '{ canary = 2, step_weights = [50, 100], interval = "1h" }'
        (root / "modelgate.toml").write_text(
            f"""
[server]
address = "127.0.0.1"
http_port = {self.http}
grpc_port = 0
metrics_port = {self.metrics}
# Small enough that a few stalled uploads fill it (overloaded), and a silent connection is closed.
max_request_bytes = {INFLIGHT_LIMIT // 2}
max_inflight_bytes = {INFLIGHT_LIMIT}
first_bytes_timeout_secs = 1
[drift]
enabled = true
window_seconds = 1
[repository]
path = "{repo}"
strict_readiness = false
[admin]
port = {self.admin}
token_file = "{root / 'token'}"
[sync]
registry = "http://127.0.0.1:{free_port()}"
wait_secs = 1
[[routes]]
model = "simple"
targets = [{{ version = 1 }}, {{ version = 2 }}]
rollout = {rollout}
feedback = {{ ttl = "1h" }}
[[routes]]
model = "simple_b"
targets = [{{ version = 1 }}, {{ version = 2 }}]
rollout = {rollout}
[[routes]]
model = "shadowed"
targets = [{{ version = 1, weight = 100 }}]
shadow = {{ version = 2, percent = 100.0 }}
"""
        )
        self.log = root / "gateway.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [str(BIN_DIR / "modelgate"), "serve", "--config", str(root / "modelgate.toml"),
                 "--data-dir", str(root / "data")],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if http_get(self.http, "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("gateway not ready\n" + self.log.read_text()[-3000:])

    def infer(self, model: str, datatype: str = "INT32") -> int:
        body = {
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": datatype, "data": list(range(16))}
                for n in ("INPUT0", "INPUT1")
            ]
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http}/v2/models/{model}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    def infer_and_label(self, model: str, label: int) -> int:
        """One inference, then its truth through the feedback endpoint: the status of the latter."""
        body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                           for n in ("INPUT0", "INPUT1")]}
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}/v2/models/{model}/infer",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            request_id = json.loads(response.read())["id"]
        truth = {"id": request_id, "label": label}
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}/v2/models/{model}/feedback",
                                         data=json.dumps(truth).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    def admin_post(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}{path}",
            data=b"",
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "x-modelgate-actor": "test"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def scrape(self) -> str:
        status, body = http_get(self.metrics, "/metrics")
        assert status == 200
        return body

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wait_for_series(gw: Gateway, name: str, seconds: float = 15) -> None:
    """Until the gateway exports `name` (an event's counter appears once it is counted)."""
    deadline = time.monotonic() + seconds
    while name not in gw.scrape():
        assert time.monotonic() < deadline, f"{name} never exported"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("gateway"))
    try:
        for _ in range(20):
            assert gw.infer("simple") == 200
            assert gw.infer("simple_b") == 200
            assert gw.infer("shadowed") == 200
        # Uploads that stall just short of their end hold their bytes: past the limit, refused (overloaded).
        stalled = []
        for _ in range(4):
            upload = socket.create_connection(("127.0.0.1", gw.http), timeout=5)
            size = INFLIGHT_LIMIT // 2 - 1000
            upload.sendall(f"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
                           .encode() + b" " * (size - 1))
            stalled.append(upload)
        wait_for_series(gw, "modelgate_overloaded_requests_total")
        for upload in stalled:
            upload.close()
        # A connection that sends nothing is closed after first_bytes_timeout_secs, and counted.
        with socket.create_connection(("127.0.0.1", gw.http), timeout=5) as silent:
            assert silent.recv(1) == b""
        assert gw.infer("simple", datatype="FP32") == 400  # a client mistake
        # Ground truth for the route that keeps predictions: the accuracy series exist.
        for label in (15, 0, 15):
            assert gw.infer_and_label("simple", label) == 200
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: gw.infer("queued"), range(6)))
        assert 200 in statuses and any(s != 200 for s in statuses), statuses
        assert gw.admin_post("/admin/v1/routes/simple/rollback")[0] == 200
        assert gw.admin_post("/admin/v1/routes/simple_b/promote")[0] == 200
        # The follower's calls to the unreachable control plane fail: wait for a failure counted.
        wait_for_series(gw, "modelgate_sync_failures_total")
        yield gw
    finally:
        gw.stop()


def exported_names(exposition: str) -> set[str]:
    return {line.split("{")[0].split()[0] for line in exposition.splitlines() if line and not line.startswith("#")}


def test_every_metric_in_the_rules_and_the_board_is_exported(gateway):
    exported = exported_names(gateway.scrape())
    recorded = {r["record"] for r in rules() if "record" in r}
    used = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(rule.get("alert") or rule.get("record"))
    for query in board_queries():
        for name in metric_names(query):
            used.setdefault(name, set()).add("deploy/grafana/modelgate.json")
    assert len(used) > 10, used
    declared = set(re.findall(r'pub const \w+: &str = "(\w+)";', (REPO / "src" / "metrics.rs").read_text()))
    assert NEEDS_A_DRIFT_EVALUATION <= declared, "src/metrics.rs no longer declares these"
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in exported | recorded | PROMETHEUS_SERIES | NEEDS_A_DRIFT_EVALUATION
    }
    assert not missing, f"not exported by the gateway (scraped names: {sorted(exported)}): {missing}"


def test_the_board_is_importable():
    """Unique panel ids, every query on the board's Prometheus data-source variable, the
    variables the queries use defined."""
    board = json.loads(BOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), ids
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "model", "version"} <= variables
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used)


def test_the_name_extraction_finds_what_it_must():
    found = metric_names(
        'histogram_quantile(0.99, sum by (model, le) (rate(modelgate_x_bucket{job="a", outcome!="b"}[5m]))) '
        "/ on (job) modelgate:y:rate5m > 0.5 and up == 0"
    )
    assert found == {"modelgate_x_bucket", "modelgate:y:rate5m", "up"}


# === A real Prometheus ===


def query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.load(response)["data"]


@pytest.fixture(scope="module")
def prometheus(gateway, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not found: scripts/setup.sh installs Debian's prometheus package")
    root = tmp_path_factory.mktemp("prometheus")
    # deploy/prometheus/prometheus.yml with the test's port and a 1 s cadence.
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{gateway.metrics}"]}]
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(root / "prometheus.log", "wb") as out:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert process.poll() is None, (root / "prometheus.log").read_text()[-3000:]
            try:
                # Ready once a recording rule over two scrapes has a value.
                if query(port, 'modelgate:requests:rate5m{model="simple"}'):
                    break
            except OSError:
                pass
            # Keep traffic flowing so rates have something to rate.
            gateway.infer("simple")
            time.sleep(0.5)
        else:
            log = (root / "prometheus.log").read_text()[-3000:]
            raise AssertionError(f"no modelgate:requests:rate5m in time\n{log}")
        yield port
    finally:
        process.terminate()
        process.wait(20)


def test_prometheus_records_the_request_rate_of_the_running_gateway(prometheus):
    [sample] = query(prometheus, 'modelgate:requests:rate5m{model="simple", version="1"}')
    assert sample["metric"]["job"] == "modelgate"
    assert float(sample["value"][1]) > 0
    # Every rule evaluates without error against the real series.
    for group in api(prometheus, "/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule


def test_every_board_query_returns_data_on_prometheus(prometheus, gateway):
    empty = []
    for expr in board_queries():
        if expr.startswith("label_values("):
            continue
        # Grafana's variables as "All" and a rate window that fits a 1 s scrape.
        promql = expr.replace("$__rate_interval", "1m")
        promql = promql.replace('=~"$model"', '=~".*"').replace('=~"$version"', '=~".*"')
        assert "$" not in promql, promql
        if metric_names(promql) & NEEDS_A_DRIFT_EVALUATION:
            continue
        if not query(prometheus, promql):
            empty.append(promql)
    assert not empty, f"board queries without data: {empty}"


def test_the_alerts_of_the_scenario_fire_or_pend(prometheus):
    deadline = time.monotonic() + 10
    wanted = {"ModelgateRolloutRolledBack": "firing", "ModelgateVersionUnavailable": "pending",
              "ModelgateControlPlaneUnreachable": "pending"}
    states = {}
    while time.monotonic() < deadline:
        states = {a["labels"]["alertname"]: a["state"] for a in api(prometheus, "/api/v1/alerts")["alerts"]}
        if all(states.get(name) == state for name, state in wanted.items()):
            break
        time.sleep(0.5)
    assert all(states.get(name) == state for name, state in wanted.items()), states
    assert "ModelgateDown" not in states


def test_every_series_the_alerts_read_has_data_on_prometheus(prometheus):
    """Alert expressions compare against thresholds, so most are empty while nothing is wrong;
    what each one reads (every metric and recording rule it names) must have data."""
    names = {name for rule in rules() if "alert" in rule for name in metric_names(rule["expr"])}
    names -= NEEDS_A_DRIFT_EVALUATION
    assert len(names) > 8, names
    empty = sorted(name for name in names if not query(prometheus, f'count({name}{{job="modelgate"}})'))
    assert not empty, f"series the alerts read without data: {empty}"


# Metric families the README names that this scenario cannot make: why, and the test that makes and
# reads each where one does (it must name the family). The names are still checked against
# src/metrics.rs, so a family renamed or dropped there fails here.
README_FAMILIES_NOT_MADE_HERE: dict[str, tuple[str, str | None]] = {
    **{name: ("a drift evaluation by the control plane", "tests/registry_sync.rs")
       for name in NEEDS_A_DRIFT_EVALUATION},
    "modelgate_accept_backoffs_total": ("a process out of file descriptors", "tests/fd_exhaustion.rs"),
    "modelgate_device_memory_bytes": ("a CUDA device", "tests/torch.rs"),
    "modelgate_route_canary_retries_total": ("a canary that fails", "tests/rollout_rollback.rs"),
    "modelgate_route_canary_hedges_total": ("a slow canary with hedging on", "tests/rollout_hedging.rs"),
    "modelgate_route_canary_rescues_total": ("a slow canary rolled back with requests in flight", "tests/rollout_hedging.rs"),
    "modelgate_artifact_bytes_downloaded_total": ("a version pulled from a registry's object storage", None),
    "modelgate_sync_applied_generation": ("a control plane that answers (this one is unreachable on purpose)", None),
    "modelgate_feedback_shipped_total": ("a shared feedback route and a control plane that answers", None),
    "modelgate_feedback_control_plane_failures_total": ("a shared feedback route's control-plane lookup", None),
}


def readme_families() -> set[str]:
    return set(re.findall(r"\b(modelgate_[a-z0-9_]+)", (REPO / "README.md").read_text()))


def test_every_metric_family_the_readme_names_is_exported_after_the_scenario(gateway):
    exported = exported_names(gateway.scrape())
    # A histogram's family is exported as its _bucket, _sum and _count series.
    families = exported | {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported}
    named = readme_families()
    assert len(named) > 30, named
    missing = sorted(name for name in named - families if name not in README_FAMILIES_NOT_MADE_HERE)
    assert not missing, f"the README names these, the gateway did not export them after the scenario: {missing}"
    declared = set(re.findall(r'"(modelgate_[a-z0-9_]+)"', (REPO / "src" / "metrics.rs").read_text()))
    undeclared = sorted(set(README_FAMILIES_NOT_MADE_HERE) - declared)
    assert not undeclared, f"exempted here but not declared in src/metrics.rs: {undeclared}"
    for name, (_, test) in README_FAMILIES_NOT_MADE_HERE.items():
        short = name.removeprefix("modelgate_")
        assert test is None or short in (REPO / test).read_text(), f"{test} does not read {name}"
