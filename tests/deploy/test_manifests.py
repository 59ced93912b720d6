"""deploy/kubernetes: every overlay renders (kubectl kustomize), every object validates against the
Kubernetes schemas (kubernetes-validate --strict), and what the manifests promise holds for the
real binaries: each modelgate container is started with its own args, env and config files (only
paths, ports and Service host names rewritten, see localpod.py), its probes answer, it listens on
exactly the ports it declares, a model pushed to its control plane (the control plane overlay's,
or the single node's embedded one) is served, and it drains within the pod's grace period at
SIGTERM.

Run: scripts/with-postgres.sh .venv/deploy-tools/bin/python -m pytest -q tests/deploy
(the control plane's database URL comes from a Secret; here it is the throwaway PostgreSQL's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import localpod  # noqa: E402
from localpod import (  # noqa: E402
    REPO,
    LocalPod,
    Running,
    Secrets,
    by_kind,
    http_get,
    is_loopback,
    listening_ports,
    modelgate_containers,
    selects,
    wait_probe,
    workloads,
)

# The oldest Kubernetes the manifests support (native sidecars are on by default from 1.29, the
# preStop `sleep` action from 1.30) and the newest whose schemas kubernetes-validate carries.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
OVERLAYS = localpod.overlays()
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: localpod.render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def image() -> localpod.Image:
    return localpod.read_dockerfile()


@pytest.fixture
def pod_root():
    """A directory the pods' user (10001) can traverse: pytest's own tmp_path is root's only."""
    root = Path(tempfile.mkdtemp(prefix="modelgate-deploy-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_every_piece_has_an_overlay():
    assert set(OVERLAYS) >= {"gateway", "sidecar", "control-plane", "single-node"}, OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_overlay_validates_strictly(overlay, version, tmp_path):
    out = subprocess.run(
        ["kubectl", "kustomize", str(localpod.OVERLAYS / overlay)], check=True, capture_output=True, text=True
    ).stdout
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(out)
    result = subprocess.run(
        [str(VALIDATE), "--strict", "--kubernetes-version", version, "--quiet", str(manifest)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# === Static promises ===


def drain_secs(container: dict, pod: LocalPod) -> int:
    """The drain the binary does at SIGTERM with this container's args and config."""
    args = container.get("args", [])
    # crates/registry/src/api/mod.rs: DRAIN_TIMEOUT of the control plane (not configurable).
    source = (REPO / "crates/registry/src/api/mod.rs").read_text()
    control_plane_drain = int(re.search(r"DRAIN_TIMEOUT[^=]*=.*from_secs\((\d+)\)", source).group(1))
    if container.get("command", [None])[0] == "modelgate-control-plane":
        return control_plane_drain
    config = gateway_config(container, pod)
    drain = config.get("server", {}).get("drain_timeout_secs", 30)
    for arg in args:
        if arg.startswith("--exit-timeout-secs="):
            drain = int(arg.split("=", 1)[1])
    # An embedded control plane drains beside the gateway, and waits out the gateway's own long
    # poll (up to its DRAIN_TIMEOUT): the pod stops after the longer of the two.
    if any(a.startswith("--control-plane-port=") and a != "--control-plane-port=0" for a in args):
        drain = max(drain, control_plane_drain)
    return drain


def gateway_config(container: dict, pod: LocalPod) -> dict:
    """The TOML the container's --config names, read from its ConfigMap."""
    for arg in container.get("args", []):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            for mount in container.get("volumeMounts", []):
                prefix = mount["mountPath"].rstrip("/") + "/"
                volume = pod.volumes[mount["name"]]
                if path.startswith(prefix) and "configMap" in volume:
                    cm = [
                        o
                        for o in by_kind(pod.objects, "ConfigMap")
                        if o["metadata"]["name"] == volume["configMap"]["name"]
                    ]
                    assert cm, f"ConfigMap {volume['configMap']['name']} not rendered"
                    return tomllib.loads(cm[0]["data"][path[len(prefix) :]])
            raise AssertionError(f"{container['name']}: --config={path} is on no ConfigMap volume")
    return {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down_and_drain_in_time(overlay, rendered, image, tmp_path):
    objects = rendered[overlay]
    assert workloads(objects), f"{overlay} renders no workload"
    for workload in workloads(objects):
        name = workload["metadata"]["name"]
        spec = workload["spec"]["template"]["spec"]
        security = spec.get("securityContext", {})
        assert security.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert str(security.get("runAsUser")) == image.user, f"{name}: runAsUser is the image's USER ({image.user})"
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            what = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, f"{what}: readOnlyRootFilesystem"
            assert sc.get("allowPrivilegeEscalation") is False, f"{what}: allowPrivilegeEscalation"
            assert {"cpu", "memory"} <= set(c.get("resources", {}).get("requests", {})), f"{what}: requests"
        pod = LocalPod(workload, objects, tmp_path / name, Secrets(), image)
        for c in modelgate_containers(spec):
            what = f"{name}/{c['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{what}: {probe}"
            if c in spec.get("initContainers", []):
                assert c.get("restartPolicy") == "Always", f"{what}: an init container gateway must be a sidecar"
            pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            grace = spec.get("terminationGracePeriodSeconds", 30)
            drain = drain_secs(c, pod)
            assert grace > pre_stop + drain, f"{what}: grace {grace} s <= preStop {pre_stop} s + drain {drain} s"
            # Where the binary writes: --data-dir must be a writable volume (the root is read-only).
            mounts = {m["mountPath"]: pod.volumes[m["name"]] for m in c.get("volumeMounts", [])}
            data_dirs = [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--data-dir=")]
            assert data_dirs, f"{what}: no --data-dir (its default, ./.modelgate, is on the read-only root)"
            for d in data_dirs:
                assert d in mounts, f"{what}: --data-dir={d} is not a mount"
                assert "emptyDir" in mounts[d] or "persistentVolumeClaim" in mounts[d], f"{what}: {d} not writable"
            assert "/tmp" in mounts, f"{what}: no writable /tmp"
            # Env names the binary reads: each appears in the binary (clap's env = "...", std::env::var).
            binary = image.binaries[f"/usr/local/bin/{(c.get('command') or image.entrypoint)[0]}"]
            if binary.exists():
                data = binary.read_bytes()
                for item in c.get("env", []):
                    assert item["name"].encode() in data, f"{what}: env {item['name']} is read nowhere in {binary}"
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            declared = {p["containerPort"] for c in modelgate_containers(spec) for p in c.get("ports", [])}
            assert int(annotations["prometheus.io/port"]) in declared, f"{name}: scrape port not declared"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_autoscaling_point_at_real_pods(overlay, rendered):
    objects = rendered[overlay]
    templates = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads(objects)}
    for service in by_kind(objects, "Service"):
        name = service["metadata"]["name"]
        pods = [t for t in templates.values() if selects(service["spec"]["selector"], t["metadata"]["labels"])]
        assert len(pods) == 1, f"Service {name} selects {len(pods)} pod templates"
        containers = pods[0]["spec"].get("initContainers", []) + pods[0]["spec"]["containers"]
        named = {p.get("name"): p["containerPort"] for c in containers for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in named, f"Service {name}: targetPort {target} is declared by no container"
            if port["name"] == "grpc":
                assert port.get("appProtocol") == "kubernetes.io/h2c", f"Service {name}: gRPC port needs h2c"
    for hpa in by_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["name"] in templates, f"HPA {hpa['metadata']['name']} scales {target['name']}, not rendered"
        assert "replicas" not in [w for w in workloads(objects) if w["metadata"]["name"] == target["name"]][0]["spec"]
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selects(selector, t["metadata"]["labels"]) for t in templates.values()), pdb["metadata"]["name"]


def test_the_dockerfile_builds_the_binaries_the_manifests_run(image):
    """Each binary deploy/Dockerfile copies is a bin target of a package its cargo build names."""
    assert image.entrypoint[0] == "modelgate"
    build = image.cargo_build
    packages = [build[i + 1] for i, a in enumerate(build) if a == "-p"]
    bins = [build[i + 1] for i, a in enumerate(build) if a == "--bin"]
    metadata = subprocess.run(
        ["cargo", "metadata", "--format-version=1", "--no-deps", "--offline"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    targets = {
        (p["name"], t["name"])
        for p in json.loads(metadata)["packages"]
        for t in p["targets"]
        if "bin" in t["kind"]
    }
    for b in bins:
        assert any((p, b) in targets for p in packages), f"--bin {b} is in none of {packages}"
    for dest in image.binaries:
        assert Path(dest).name in bins, f"the image copies {dest}, which its cargo build does not build"
    for dest, local in image.paths.items():
        if dest not in image.binaries:
            assert local.exists(), f"deploy/Dockerfile copies {local} to {dest}: missing after scripts/setup.sh"


# === The binaries, started as the manifests say ===


class Cluster:
    """The pods of the overlays under test, started on demand (a gateway's control plane first)."""

    def __init__(self, rendered, image, root: Path):
        self.rendered = rendered
        self.image = image
        self.root = root
        url = os.environ.get("MODELGATE_TEST_POSTGRES_URL")
        if not url:
            pytest.fail("MODELGATE_TEST_POSTGRES_URL is not set: run under scripts/with-postgres.sh")
        self.secrets = Secrets({("modelgate-control-plane-db", "url"): url})
        self.pods: dict[str, LocalPod] = {}
        self.started: dict[str, list[Running]] = {}
        # Containers other containers call through a Service (the control plane).
        self.called: list[Running] = []
        self.pods_by_running: dict[int, LocalPod] = {}

    def service(self, name: str, prefer: str) -> tuple[dict, list[dict]]:
        """A Service by name: from the overlay under test, else from the smallest other overlay that
        renders it (the one deploy/README.md says to apply first: control-plane, not cluster)."""
        others = sorted((o for o in self.rendered if o != prefer), key=lambda o: len(self.rendered[o]))
        for overlay in [prefer] + others:
            for s in by_kind(self.rendered[overlay], "Service"):
                if s["metadata"]["name"] == name:
                    return s, self.rendered[overlay]
        raise AssertionError(f"no overlay renders a Service {name!r}")

    def start_workload(self, workload: dict, objects: list[dict], overlay: str) -> list[Running]:
        name = workload["metadata"]["name"] + "@" + str(id(objects))
        if name in self.started:
            return self.started[name]
        pod = LocalPod(workload, objects, self.root / workload["metadata"]["name"], self.secrets, self.image)
        self.pods[name] = pod
        runs = []
        for container in modelgate_containers(pod.spec):
            hosts = self.dependencies(container, pod, overlay)
            running = pod.start(container, hosts)
            self.pods_by_running[id(running)] = pod
            wait_probe(running, container["startupProbe"], "startupProbe")
            runs.append(running)
        self.started[name] = runs
        return runs

    def dependencies(self, container: dict, pod: LocalPod, overlay: str) -> dict[str, str]:
        """Services the container's config calls (`http://NAME:PORT`): started, and mapped to them."""
        texts = list(container.get("args", []))
        for mount in container.get("volumeMounts", []):
            volume = pod.volumes[mount["name"]]
            if "configMap" in volume:
                for cm in by_kind(pod.objects, "ConfigMap"):
                    if cm["metadata"]["name"] == volume["configMap"]["name"]:
                        texts += list(cm.get("data", {}).values())
        hosts = {}
        for text in texts:
            for host, port in re.findall(r"http://([a-z0-9-]+):(\d+)", text):
                service, objects = self.service(host, overlay)
                [service_port] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
                [target] = [
                    w
                    for w in workloads(objects)
                    if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
                ]
                runs = self.start_workload(target, objects, overlay)
                self.called.extend(r for r in runs if r not in self.called)
                local = runs[0].port(service_port["targetPort"])
                hosts[f"{host}:{port}"] = f"127.0.0.1:{local}"
        return hosts

    def stop(self) -> None:
        for pod in self.pods.values():
            pod.stop_all()


def check_running(running: Running, image) -> None:
    c = running.container
    what = f"{running.name} ({' '.join(running.argv)})"
    wait_probe(running, c["readinessProbe"], "readinessProbe", timeout=10)
    wait_probe(running, c["livenessProbe"], "livenessProbe", timeout=10)
    # Exactly the declared ports on the pod network; loopback-only listeners (the admin API, the
    # embedded control plane) are for kubectl port-forward and need no declaration.
    declared = {running.port(p["containerPort"]) for p in c.get("ports", [])}
    listening = listening_ports(running.process.pid)
    public = {port for address, port in listening if not is_loopback(address)}
    assert public == declared, f"{what}: listens on {sorted(listening)}, declares {sorted(declared)}"
    # Every port it binds is one the manifests set (and so the test moved): a default port
    # nobody set would be a port the manifests do not know about.
    unset = {port for _, port in listening} - set(running.ports.values())
    assert not unset, f"{what}: listens on ports no manifest sets: {sorted(unset)}"


def check_follows_control_plane(running: Running, pod_spec: dict, annotations: dict) -> None:
    """A gateway that names a control plane reaches it with the Secret's token."""
    port = running.port(int(annotations["prometheus.io/port"]))
    deadline = time.monotonic() + 20
    body = ""
    while time.monotonic() < deadline:
        status, body = http_get(port, annotations.get("prometheus.io/path", "/metrics"))
        assert status == 200, f"{running.name}: scrape -> {status}"
        if re.search(r"^modelgate_control_plane_connected 1$", body, re.M):
            return
        time.sleep(0.3)
    lines = [line for line in body.splitlines() if "control_plane" in line]
    raise AssertionError(f"{running.name}: not connected to its control plane: {lines}\n{running.log_tail()}")


def control_plane_token(cp: Running) -> str:
    token_mount = [m for m in cp.container["volumeMounts"] if "token" in m["name"]][0]
    return (cp.root / "volumes" / token_mount["name"] / "token").read_text().strip()


def release(port: int, token: str, model: str) -> None:
    """`modelgate registry push MODEL models/mlp --alias champion` against a control plane, as
    deploy/README.md tells an operator to (through a port-forward there, directly here)."""
    result = subprocess.run(
        [str(localpod.BIN_DIR / "modelgate"), "registry", "--address", f"127.0.0.1:{port}",
         "push", model, str(REPO / "models" / "mlp"), "--alias", "champion"],
        env={"PATH": os.environ["PATH"], "MODELGATE_ADMIN_TOKEN": token, "USER": "test"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def check_serves_released(gateway: Running, model: str) -> None:
    """The gateway pulls and serves what was released through its control plane."""
    port = gateway.port("http")
    deadline = time.monotonic() + 30
    status = 0
    while time.monotonic() < deadline:
        status, _ = http_get(port, f"/v2/models/{model}/ready")
        if status == 200:
            return
        time.sleep(0.3)
    raise AssertionError(f"{gateway.name}: {model} not ready ({status}) after its release\n{gateway.log_tail()}")


def check_reported(gateway: Running, control_planes: list[Running]) -> None:
    """The control plane lists the gateway under its pod's name ($HOSTNAME)."""
    assert control_planes, f"{gateway.name} follows a control plane the test did not start"
    deadline = time.monotonic() + 20
    ids: list = []
    while time.monotonic() < deadline:
        for cp in control_planes:
            token = control_plane_token(cp)
            port = cp.port(cp.container["ports"][0]["containerPort"])
            status, body = http_get(port, "/cp/v1/gateways", {"Authorization": f"Bearer {token}"})
            assert status == 200, body
            ids = [g["id"] for g in json.loads(body)["gateways"]]
            if gateway.env["HOSTNAME"] in ids:
                return
        time.sleep(0.3)
    raise AssertionError(f"{gateway.name}: not among the control plane's gateways {ids}\n{gateway.log_tail()}")


def check_control_plane_api(running: Running) -> None:
    """The control plane answers its token when called by the Service's name."""
    args = running.container.get("args", [])
    allowed = [a.split("=", 1)[1] for a in args if a.startswith("--allowed-host=")]
    token_mount = [m for m in running.container["volumeMounts"] if "token" in m["name"]]
    assert allowed and token_mount
    token = (running.root / "volumes" / token_mount[0]["name"] / "token").read_text().strip()
    port = running.port(running.container["ports"][0]["containerPort"])
    for host in allowed:
        status, body = http_get(port, "/cp/v1/models", {"Authorization": f"Bearer {token}", "Host": host})
        assert status == 200, f"GET /cp/v1/models as {host}: {status} {body[:200]}"


def is_control_plane(running: Running) -> bool:
    return (running.container.get("command") or [""])[0] == "modelgate-control-plane"


def check_release_through_followed_control_plane(gateway: Running, cluster: Cluster, released: set) -> None:
    """A gateway following a control plane: connected, serves a release, reports under its name."""
    check_follows_control_plane(gateway, gateway.pod_spec, gateway.annotations)
    assert cluster.called, f"{gateway.name} follows a control plane the test did not start"
    cp = cluster.called[0]
    if id(cp) not in released:
        release(cp.port(cp.container["ports"][0]["containerPort"]), control_plane_token(cp), "fraud")
        released.add(id(cp))
    check_serves_released(gateway, "fraud")
    check_reported(gateway, cluster.called)


def check_release_through_embedded_control_plane(gateway: Running, port: int) -> None:
    """The single node's embedded control plane (loopback only: a port-forward in a cluster),
    called with the admin token it shares with the admin API."""
    [volume] = [
        v["name"]
        for v in gateway.pod_spec["volumes"]
        if v.get("secret", {}).get("secretName") == "modelgate-admin-token"
    ]
    token = (gateway.root / "volumes" / volume / "token").read_text().strip()
    release(gateway.port(port), token, "fraud")
    check_serves_released(gateway, "fraud")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_runs_on_the_real_binaries(overlay, rendered, image, pod_root):
    cluster = Cluster(rendered, image, pod_root)
    try:
        objects = rendered[overlay]
        checked: list[Running] = []
        released: set = set()
        for workload in workloads(objects):
            for running in cluster.start_workload(workload, objects, overlay):
                running.annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
                check_running(running, image)
                if is_control_plane(running):
                    check_control_plane_api(running)
                else:
                    config = gateway_config(running.container, cluster.pods_by_running[id(running)])
                    if config.get("sync", {}).get("registry"):
                        check_release_through_followed_control_plane(running, cluster, released)
                    args = running.container.get("args", [])
                    embedded = [a.split("=", 1)[1] for a in args if a.startswith("--control-plane-port=")]
                    if embedded and embedded[0] != "0":
                        check_release_through_embedded_control_plane(running, int(embedded[0]))
                checked.append(running)
        assert checked, f"{overlay}: no modelgate container ran"
        # SIGTERM as the kubelet sends it after preStop: each exits cleanly within what is left.
        for running in checked:
            grace = running.pod_spec.get("terminationGracePeriodSeconds", 30)
            left = grace - running.container["lifecycle"]["preStop"]["sleep"]["seconds"]
            took = running.stop(timeout=left)
            print(f"{running.name}: exited {took:.1f} s after SIGTERM (allowed {left} s)")
            code = running.process.returncode
            assert code == 0, f"{running.name}: exit {code} after SIGTERM\n{running.log_tail()}"
    finally:
        cluster.stop()


def test_a_flag_the_binary_does_not_know_fails_the_run(rendered, image, pod_root):
    """The run check above is what catches a manifest that names a flag the binary lacks."""
    objects = [dict(o) for o in rendered["single-node"]]
    [workload] = workloads(objects)
    container = dict(modelgate_containers(workload["spec"]["template"]["spec"])[0])
    container["args"] = container["args"] + ["--drain-seconds=25"]
    pod = LocalPod(workload, objects, pod_root, Secrets(), image)
    running = pod.start(container)
    try:
        with pytest.raises(AssertionError, match="exited .* before its startupProbe passed"):
            wait_probe(running, container["startupProbe"], "startupProbe")
        assert "unexpected argument '--drain-seconds'" in running.log_tail()
    finally:
        pod.stop_all()
