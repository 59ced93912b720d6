#!/usr/bin/env python3
"""Drift checks end to end: rows with known shifts through a running gateway, modelgate's verdicts
against Evidently, alibi-detect and numpy/scipy on the same rows.

What it does (issue 11, "Check it against the tools people trust"):

* Data: a reference of 10,000 rows x 16 features N(0, 1) (FP32) and one categorical feature
  (5 categories, p = .40/.25/.15/.12/.08, an INT64 column the reference declares categorical);
  1,000-row windows in six scenarios: mean shifts of 0 / 0.1 / 0.15 / 0.25 sigma and a scale of
  x1.2 on every numeric feature, and a 10 % category swap (numerics unshifted). `--windows` per
  scenario, fresh rows each.
* The gateway: `modelgate serve` with the embedded control plane, a model repository of copies of
  `drift16` (models/make_models.py --drift: INPUT0 FP32 [batch, 16], CAT INT64 [batch, 1]) and
  `[drift] enabled = true` with 1-second windows. Four variants of the model get the same rows,
  each with its own reference (`modelgate profile` of the same CSV, PUT .../reference):
    ks          10,000-row reference, rules force KS (alpha 0.05) and chi-squared for CAT
    auto        10,000-row reference, Evidently's auto rule: normed Wasserstein >= 0.1, JS >= 0.1
    auto_small  the first 1,000 reference rows, auto: KS p < 0.05 and chi-squared p < 0.05
    psi         10,000-row reference, rules force PSI >= 0.1
  `--replicas` copies of each variant take different windows in the same round. A round sends
  each window's rows (binary V2 infer, `--batch` rows a request) right after a window boundary,
  waits for the window to close and reach the control plane, runs `POST /cp/v1/drift/evaluate`
  with `--drift-span` just covering that window, and reads `GET /cp/v1/models/{m}/drift`; an
  evaluation counts only when it merged exactly the window's 1,000 rows (else the window is sent
  again in a later round).
* The peers, on the same rows: alibi-detect `KSDrift(p_val=0.05)` per feature (drift_type
  "feature": no Bonferroni, one verdict per feature) and `ChiSquareDrift`; Evidently 0.7.23's
  stattests as `DataDriftPreset` calls them (the same forced tests; `--evidently-reports` windows
  also run the whole `Report([DataDriftPreset(...)])` and must give the same values); numpy PSI on
  the reference's bin edges from `GET .../reference`; scipy for the KS distance.
* Live: a second gateway with the evaluator on (`--drift-every 1`, span 2 windows + 2 s) gets unshifted rows,
  then rows shifted by 0.25 sigma; the windows it takes `modelgate_drift_status{model,version}`
  on the gateway's /metrics to flip to 1 are counted (skipped, and said so, while the gateway has
  no such metric).

Targets (control-plane notes 5.8; exit 1 when one is missed):
  KS false-positive rate 5 +- 2 % on unshifted windows (both KS variants);
  KS power within 3 points of alibi-detect's KSDrift in every shifted scenario (both KS variants),
  and chi-squared within 3 points of ChiSquareDrift on the category swap;
  verdicts equal to Evidently's on >= 95 % of (feature, window) pairs (auto, 10,000-row reference);
  PSI within 1e-6 of numpy on the same bin edges (every numeric and categorical window);
  the live shift flips modelgate_drift_status within 2 windows.

    python3 -m venv target/drift-venv
    target/drift-venv/bin/pip install -r scripts/requirements-drift-peers.txt
    cargo build --bin modelgate
    target/drift-venv/bin/python load-tests/drift/through_gateway.py [--windows 30] [--replicas 3]

About 4 minutes on 2 cores with a debug build (60 rounds of ~3.5 s: 12 models, one evaluation
round of the control plane per round; the peers run meanwhile in a worker process).

`--fake-gateway` leaves the data plane out: this script profiles each window in Python (KLL k=200
with `datasketches`, the histogram on the reference's edges, frequent items) and posts it as a
gateway's sync report, so the control plane's statistics are checked without the profiler.
`--self-test` checks the comparison code on synthetic verdicts (no gateway, no peers' install
beyond numpy).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # load-tests/: procs, report
from procs import REPO, RESULTS, Processes, free_port, http_get, stop_on_sigterm  # noqa: E402
from report import Check, Report, markdown_table  # noqa: E402

FEATURES = 16
NUMERIC = [f"INPUT0[{i}]" for i in range(FEATURES)]
CAT = "CAT[0]"
REF_ROWS, SMALL_REF_ROWS, WIN_ROWS = 10_000, 1_000, 1_000
ALPHA = 0.05
CATEGORY_P = np.array([0.40, 0.25, 0.15, 0.12, 0.08])
LIVE_SHIFT = 0.25

# name, mean shift (sigma), scale, category swap share
SCENARIOS = [
    ("shift 0", 0.0, 1.0, 0.0),
    ("shift 0.1", 0.1, 1.0, 0.0),
    ("shift 0.15", 0.15, 1.0, 0.0),
    ("shift 0.25", 0.25, 1.0, 0.0),
    ("scale x1.2", 0.0, 1.2, 0.0),
    ("category swap 10 %", 0.0, 1.0, 0.1),
]


def fixed(stat: str, threshold: float) -> dict:
    return {"rule": "fixed", "stat": stat, "threshold": threshold}


@dataclass(frozen=True)
class Variant:
    name: str
    reference_rows: int
    rules: dict  # feature -> modelgate Rule, applied on top of the control plane's `auto`
    what: str
    short: str


VARIANTS = [
    Variant("ks", REF_ROWS, {**{f: fixed("ks", ALPHA) for f in NUMERIC}, CAT: fixed("chi_squared", ALPHA)},
            "10,000-row reference, KS / chi-squared forced", "KS, 10k reference"),
    Variant("auto", REF_ROWS, {}, "10,000-row reference, auto (normed Wasserstein / JS >= 0.1)", "auto, 10k reference"),
    Variant("auto_small", SMALL_REF_ROWS, {}, "1,000-row reference, auto (KS / chi-squared p < 0.05)",
            "KS via auto, 1k reference"),
    Variant("psi", REF_ROWS, {f: fixed("psi", 0.1) for f in [*NUMERIC, CAT]}, "10,000-row reference, PSI >= 0.1 forced",
            "PSI, 10k reference"),
]
VARIANT = {v.name: v for v in VARIANTS}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    ref: np.ndarray  # (REF_ROWS, 16) float32
    ref_cat: np.ndarray  # (REF_ROWS,) int64
    x: dict[str, np.ndarray]  # scenario -> (windows, WIN_ROWS, 16) float32
    cat: dict[str, np.ndarray]  # scenario -> (windows, WIN_ROWS) int64

    def window_ids(self) -> list[tuple[str, int]]:
        return [(s, w) for s, *_ in SCENARIOS for w in range(len(self.x[s]))]


def category_swap(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    """Each row, with probability `share`, takes another category chosen uniformly."""
    swap = rng.random(values.shape) < share
    other = (values + rng.integers(1, len(CATEGORY_P), values.shape)) % len(CATEGORY_P)
    return np.where(swap, other, values)


def make_data(seed: int, windows: int) -> Data:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((REF_ROWS, FEATURES)).astype(np.float32)
    ref_cat = rng.choice(len(CATEGORY_P), REF_ROWS, p=CATEGORY_P).astype(np.int64)
    xs, cats = {}, {}
    for name, shift, scale, swap in SCENARIOS:
        xs[name] = (rng.standard_normal((windows, WIN_ROWS, FEATURES)) * scale + shift).astype(np.float32)
        c = rng.choice(len(CATEGORY_P), (windows, WIN_ROWS), p=CATEGORY_P).astype(np.int64)
        cats[name] = category_swap(rng, c, swap) if swap else c
    return Data(ref, ref_cat, xs, cats)


def write_reference_csv(path: Path, x: np.ndarray, cat: np.ndarray) -> None:
    """Header INPUT0[0..15],CAT[0]: the names the gateway's profiler gives the features. Floats as
    the shortest text that reads back as the same double (the FP32 value widened)."""
    with open(path, "w") as f:
        f.write(",".join([*NUMERIC, CAT]) + "\n")
        for row, c in zip(x.astype(np.float64).tolist(), cat.tolist()):
            f.write(",".join(map(repr, row)) + f",{c}\n")


# ---------------------------------------------------------------------------------------------
# Statistics written here from their definitions (numpy), for PSI and the fake gateway.


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """modelgate-sketch's bins: (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def floored(counts: np.ndarray) -> np.ndarray:
    """Evidently's get_binned_data(feel_zeroes=True) floor for empty bins."""
    p = counts.astype(float) / counts.sum()
    smallest = p[p > 0].min()
    p[p == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
    return p


def numpy_psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    r, c = floored(ref_counts), floored(cur_counts)
    return float(np.sum((r - c) * np.log(r / c)))


def category_counts(ref_cat: np.ndarray, cur_cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys = np.union1d(ref_cat, cur_cat)
    return (np.array([(ref_cat == k).sum() for k in keys]), np.array([(cur_cat == k).sum() for k in keys]))


# ---------------------------------------------------------------------------------------------
# The peers


@dataclass
class PeerResult:
    """One feature of one window under one tool: its statistic and verdict."""

    value: float
    drifted: bool
    p_value: float | None = None
    distance: float | None = None  # KS D, chi-squared statistic
    test: str | None = None  # the test Evidently picked


class Peers:
    """alibi-detect and Evidently on the same rows. Their imports take tens of seconds, so the
    harness runs them in a worker process (`peer_worker`) while the gateway rounds run."""

    def __init__(self, data: Data):
        import pandas as pd
        from alibi_detect.cd import ChiSquareDrift, KSDrift
        from evidently.legacy.calculations.stattests.registry import get_stattest
        from evidently.legacy.core import ColumnType

        self.pd, self.get_stattest, self.ColumnType = pd, get_stattest, ColumnType
        self.data = data
        small = slice(0, SMALL_REF_ROWS)
        self.ks = {"ks": KSDrift(data.ref, p_val=ALPHA), "auto_small": KSDrift(data.ref[small], p_val=ALPHA)}
        self.chi = {
            "ks": ChiSquareDrift(data.ref_cat[:, None], p_val=ALPHA),
            "auto_small": ChiSquareDrift(data.ref_cat[small, None], p_val=ALPHA),
        }
        self.ref_series = {
            rows: {f: pd.Series(data.ref[:rows, i].astype(np.float64), name=f) for i, f in enumerate(NUMERIC)}
            | {CAT: pd.Series(data.ref_cat[:rows].astype(str), name=CAT)}
            for rows in (REF_ROWS, SMALL_REF_ROWS)
        }

    def evidently(self, variant: str, x: np.ndarray, cat: np.ndarray, numeric_too: bool = True) -> dict[str, PeerResult]:
        """Evidently's stattests as DataDriftPreset runs them: `ks`/`chisquare` forced for the
        KS variant, `wasserstein`/`jensenshannon` for auto (what its auto picks above 1,000
        reference rows), and its own auto choice for the 1,000-row reference."""
        rows = VARIANT[variant].reference_rows
        methods = {"ks": ("ks", "chisquare"), "auto": ("wasserstein", "jensenshannon"), "auto_small": (None, None)}
        num_method, cat_method = methods[variant]
        out = {}
        for i, f in enumerate([*NUMERIC, CAT] if numeric_too else [CAT]):
            numeric = f != CAT
            cur = (self.pd.Series(x[:, i].astype(np.float64), name=f) if numeric
                   else self.pd.Series(cat.astype(str), name=f))
            ref = self.ref_series[rows][f]
            ctype = self.ColumnType.Numerical if numeric else self.ColumnType.Categorical
            test = self.get_stattest(ref, cur, ctype, num_method if numeric else cat_method)
            result = test(ref, cur, ctype, None)
            out[f] = PeerResult(float(result.drift_score), bool(result.drifted), test=test.name)
        return out

    def alibi(self, variant: str, x: np.ndarray, cat: np.ndarray) -> dict[str, PeerResult]:
        pred = self.ks[variant].predict(x, drift_type="feature", return_p_val=True, return_distance=True)["data"]
        out = {f: PeerResult(float(pred["p_val"][i]), bool(pred["is_drift"][i]), float(pred["p_val"][i]),
                             float(pred["distance"][i])) for i, f in enumerate(NUMERIC)}
        c = self.chi[variant].predict(cat[:, None], drift_type="feature", return_p_val=True, return_distance=True)["data"]
        out[CAT] = PeerResult(float(c["p_val"][0]), bool(c["is_drift"][0]), float(c["p_val"][0]), float(c["distance"][0]))
        return out

    def window(self, x: np.ndarray, cat: np.ndarray) -> dict[str, dict[str, dict[str, PeerResult]]]:
        """variant -> tool -> feature -> result. Evidently's `ks` on the 10,000-row reference is
        the same `scipy.stats.ks_2samp` call as alibi-detect's, so only its categorical test runs
        there (the slowest call of a window otherwise)."""
        return {
            "ks": {"alibi": self.alibi("ks", x, cat), "evidently": self.evidently("ks", x, cat, numeric_too=False)},
            "auto_small": {"alibi": self.alibi("auto_small", x, cat), "evidently": self.evidently("auto_small", x, cat)},
            "auto": {"evidently": self.evidently("auto", x, cat)},
        }

    def preset_check(self, variant: str, x: np.ndarray, cat: np.ndarray) -> float:
        """Runs the whole Report([DataDriftPreset(...)]) on one window; returns the largest
        difference between its per-column values and the stattest calls used for every window."""
        from evidently import DataDefinition, Dataset, Report as EvReport
        from evidently.presets import DataDriftPreset

        pd = self.pd
        rows = VARIANT[variant].reference_rows
        ref = pd.DataFrame({f: self.ref_series[rows][f] for f in [*NUMERIC, CAT]})
        cur = pd.DataFrame({f: x[:, i].astype(np.float64) for i, f in enumerate(NUMERIC)} | {CAT: cat.astype(str)})
        definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=[CAT])
        preset = {"ks": DataDriftPreset(num_method="ks", cat_method="chisquare"),
                  "auto": DataDriftPreset(num_method="wasserstein", cat_method="jensenshannon"),
                  "auto_small": DataDriftPreset()}[variant]
        run = EvReport([preset]).run(Dataset.from_pandas(cur, data_definition=definition),
                                     Dataset.from_pandas(ref, data_definition=definition))
        values = {}
        for metric in run.dict()["metrics"]:
            column = metric.get("config", {}).get("column")
            if metric.get("config", {}).get("type", "").endswith("ValueDrift") and column:
                values[column] = float(metric["value"])
        direct = self.evidently(variant, x, cat)
        if set(values) != set(direct):
            return math.inf
        return max(abs(values[f] - direct[f].value) for f in direct)


def numpy_psi_window(data: Data, edges: dict[str, np.ndarray], x: np.ndarray, cat: np.ndarray) -> dict[str, PeerResult]:
    """numpy PSI of one window on the reference's bin edges (numeric) and categories."""
    out = {}
    for i, f in enumerate(NUMERIC):
        ref = bin_counts(data.ref[:, i].astype(np.float64), edges[f])
        psi = numpy_psi(ref, bin_counts(x[:, i].astype(np.float64), edges[f]))
        out[f] = PeerResult(psi, psi >= 0.1)
    psi = numpy_psi(*category_counts(data.ref_cat, cat))
    out[CAT] = PeerResult(psi, psi >= 0.1)
    return out


_PEERS: Peers | None = None


def peer_worker_init(seed: int, windows: int) -> None:
    global _PEERS
    import warnings

    warnings.filterwarnings("ignore")
    _PEERS = Peers(make_data(seed, windows))


def peer_worker_window(key: tuple[str, int]):
    data = _PEERS.data
    return key, _PEERS.window(data.x[key[0]][key[1]], data.cat[key[0]][key[1]])


def peer_worker_preset(variant: str, key: tuple[str, int]) -> float:
    data = _PEERS.data
    return _PEERS.preset_check(variant, data.x[key[0]][key[1]], data.cat[key[0]][key[1]])


# ---------------------------------------------------------------------------------------------
# modelgate: the gateway, its control plane and the fake gateway


class ControlPlane:
    def __init__(self, port: int, token: str):
        self.port, self.token = port, token

    def call(self, method: str, path: str, body: object | None = None, timeout: float = 60) -> tuple[int, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": f"Bearer {self.token}"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, data, headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw) if raw else None
            except json.JSONDecodeError:
                return response.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def ok(self, method: str, path: str, body: object | None = None) -> object:
        status, reply = self.call(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {str(reply)[:500]}")
        return reply


def infer(conn: http.client.HTTPConnection, model: str, x: np.ndarray, cat: np.ndarray) -> None:
    """One binary-tensor V2 infer request (Triton's binary data extension)."""
    n = len(x)
    header = json.dumps({
        "inputs": [
            {"name": "INPUT0", "shape": [n, FEATURES], "datatype": "FP32", "parameters": {"binary_data_size": n * FEATURES * 4}},
            {"name": "CAT", "shape": [n, 1], "datatype": "INT64", "parameters": {"binary_data_size": n * 8}},
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }).encode()
    body = header + np.ascontiguousarray(x, dtype="<f4").tobytes() + np.ascontiguousarray(cat, dtype="<i8").tobytes()
    conn.request("POST", f"/v2/models/{model}/infer", body,
                 {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    reply = response.read()
    if response.status != 200:
        raise RuntimeError(f"infer {model}: HTTP {response.status}: {reply[:300]!r}")


def model_name(variant: str, replica: int) -> str:
    return f"drift_{variant}_{replica}"


def build_repository(root: Path, names: list[str]) -> None:
    """drift16 from models/make_models.py, copied under each name (config.pbtxt renamed)."""
    built = root / "built"
    python = REPO / ".venv" / "models" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run scripts/setup.sh models")
    subprocess.run([str(python), str(REPO / "models" / "make_models.py"), "--drift", "--only", "drift16", "--out", str(built)],
                   check=True, capture_output=True)
    for name in names:
        target = root / "repo" / name
        shutil.copytree(built / "drift16", target)
        config = target / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "drift16"', f'name: "{name}"'))


def sketch_window(x: np.ndarray, cat: np.ndarray, edges: dict[str, np.ndarray]) -> dict:
    """A window profile as the gateway's profiler would ship it (the modelgate-sketch wire form),
    made with Python's datasketches: KLL k=200, histogram on the reference's edges, frequent items."""
    from datasketches import frequent_strings_sketch, kll_doubles_sketch

    features = {}
    for i, f in enumerate(NUMERIC):
        v = x[:, i].astype(np.float64)
        kll = kll_doubles_sketch(200)
        kll.update(v)
        mean = float(v.mean())
        features[f] = {"kind": "numeric", "profile": {
            "rows": len(v), "nan": 0, "pos_inf": 0, "neg_inf": 0, "min": float(v.min()), "max": float(v.max()),
            "sum": float(v.sum()), "mean": mean, "m2": float(((v - mean) ** 2).sum()),
            "edges": edges[f].tolist(), "bins": bin_counts(v, edges[f]).tolist(),
            "kll": base64.b64encode(kll.serialize()).decode()}}
    items = frequent_strings_sketch(6)  # 64-entry map, the gateway's DEFAULT_MAX_ITEMS
    for c in cat.tolist():
        items.update(str(c))
    features[CAT] = {"kind": "categorical", "profile": {"missing": 0, "items": base64.b64encode(items.serialize()).decode()}}
    return {"features": features}


@dataclass
class Evaluated:
    """modelgate's evaluation of one window under one variant."""

    features: dict[str, dict]  # feature -> verdict {stat, value, p_value, threshold, drifted, ...}
    dataset: dict
    rows: int
    attempts: int


@dataclass
class Gateway:
    procs: Processes
    args: argparse.Namespace
    workdir: Path
    names: list[str]
    token: str
    live: bool = False
    http_port: int = 0
    metrics_port: int = 0
    cp: ControlPlane | None = None
    server: object = None

    def start(self) -> None:
        a = self.args
        self.http_port, self.metrics_port = free_port(), free_port()
        cp_port, admin_port = free_port(), free_port()
        config = self.workdir / "modelgate.toml"
        window = a.live_window_seconds if self.live else a.window_seconds
        drift = "" if a.fake_gateway else (
            f"\n[drift]\nenabled = true\nwindow_seconds = {window}\nkeep_windows = 600\nqueue = 4096\n")
        config.write_text(
            f'[server]\naddress = "127.0.0.1"\nhttp_port = {self.http_port}\ngrpc_port = 0\nmetrics_port = {self.metrics_port}\n'
            f'\n[repository]\npath = "{self.workdir / "repo"}"\n'
            f'\n[admin]\nport = {admin_port}\n{drift}')
        # Live: the evaluator every second over a span of two windows and 2 s. A window counts
        # only while its START is within the span, and the gateway ships closed windows every
        # window_seconds at its own phase (up to a window after the close): a span of two windows
        # misses a window for good at some phases (seen: no evaluation at all in 4 windows).
        every = 1 if self.live else 3600
        span = 2 * window + 2 if self.live else a.drift_span
        argv = [str(a.binary), "serve", "--config", str(config), "--admin-token-file", str(self.workdir / "token"),
                "--data-dir", str(self.workdir / "data"), "--control-plane-port", str(cp_port),
                "--drift-every", str(every), "--drift-span", str(span), "--drift-min-rows", str(WIN_ROWS // 2)]
        self.server = self.procs.start("gateway-live" if self.live else "gateway", argv,
                                       env={"RUST_LOG": os.environ.get("RUST_LOG", "info")}, cwd=REPO)
        self.server.wait_http(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=180)
        self.cp = ControlPlane(cp_port, self.token)
        deadline = time.monotonic() + 120
        while True:  # seeded at start: every model registered as version 1
            missing = [n for n in self.names if self.cp.call("GET", f"/cp/v1/models/{n}/drift")[0] != 200]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"models not registered in the control plane: {missing}")
            time.sleep(0.5)

    def put_references(self, references: dict[str, dict]) -> dict[str, np.ndarray]:
        """PUTs each model's reference; waits until the gateway applied the state that carries
        them; returns the bin edges per feature (from GET .../reference)."""
        generation = 0
        for name in self.names:
            variant = name.rsplit("_", 1)[0].removeprefix("drift_") if not self.live else "auto"
            reply = self.cp.ok("PUT", f"/cp/v1/models/{name}/versions/1/reference?source=through_gateway.py",
                               references[variant])
            generation = max(generation, int(reply["generation"]))
        self.wait_applied(generation)
        stored = self.cp.ok("GET", f"/cp/v1/models/{self.names[0]}/versions/1/reference")
        features = stored["reference"]["profile"]["features"]
        return {f: np.array(features[f]["profile"]["edges"], dtype=np.float64) for f in NUMERIC}

    def wait_applied(self, generation: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            status, reply = self.cp.call("GET", "/cp/v1/gateways")
            if status == 200:
                last = reply
                gateways = reply.get("gateways", reply) if isinstance(reply, dict) else reply
                applied = [g.get("applied_generation", g.get("report", {}).get("applied_generation", -1))
                           for g in gateways if isinstance(g, dict)]
                if any(a is not None and a >= generation for a in applied):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"no gateway applied generation {generation} within {timeout} s: {str(last)[:500]}")

    def digests(self) -> dict[str, str]:
        out = {}
        for name in self.names:
            reply = self.cp.ok("GET", f"/cp/v1/models/{name}/versions/1")
            out[name] = reply.get("manifest_digest") or reply.get("digest") or reply.get("version", {}).get("manifest_digest")
        return out

    def latest(self, name: str) -> dict | None:
        reply = self.cp.ok("GET", f"/cp/v1/models/{name}/drift?history=1")
        evaluations = reply.get("versions", {}).get("1", {}).get("evaluations", [])
        return evaluations[0] if evaluations else None

    def metric(self, name: str) -> float | None:
        """modelgate_drift_status{model=name} on the gateway's /metrics; None when absent."""
        status, body = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
        if status != 200:
            return None
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("modelgate_drift_status{") and f'model="{name}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None


def collect(gw: Gateway, data: Data, edges: dict[str, np.ndarray], args: argparse.Namespace,
            log) -> tuple[dict[tuple[str, str, int], Evaluated], dict]:
    """Sends every window through the gateway (or the fake gateway) and reads modelgate's
    evaluation of exactly that window for every variant. Returns (variant, scenario, window) ->
    Evaluated, and counts of what happened."""
    W, S = args.window_seconds, args.drift_span
    pending = data.window_ids()
    attempts: dict[tuple[str, int], int] = {}
    results: dict[tuple[str, str, int], Evaluated] = {}
    stats = {"rounds": 0, "retried": 0, "failed": [], "send_s": 0.0, "wait_s": 0.0, "eval_s": 0.0}
    conns = {}
    digests = gw.digests() if args.fake_gateway else {}
    next_start = 0.0

    def send(name: str, x: np.ndarray, cat: np.ndarray) -> None:
        conn = conns.get(name) or http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=60)
        conns[name] = conn
        for lo in range(0, len(x), args.batch):
            try:
                infer(conn, name, x[lo:lo + args.batch], cat[lo:lo + args.batch])
            except (http.client.HTTPException, OSError):
                conn.close()
                conn = conns[name] = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=60)
                infer(conn, name, x[lo:lo + args.batch], cat[lo:lo + args.batch])

    pool = ThreadPoolExecutor(max_workers=4)
    if not args.fake_gateway:
        # Warm-up: one request per model (the first batch of a model and its profiler plan), then
        # long enough for those rows to leave the span of the first evaluation.
        warm = data.ref[:args.batch], data.ref_cat[:args.batch]
        list(pool.map(lambda name: send(name, *warm), gw.names))
        next_start = math.floor(time.time() / W) * W + W + S + 0.001
    while pending:
        batch, pending = pending[:args.replicas], pending[args.replicas:]
        stats["rounds"] += 1
        # Start right after a window boundary, and late enough that the windows of the round
        # before have left the span.
        now = time.time()
        start = max(math.floor(now / W) * W + W, next_start)
        time.sleep(max(0.0, start - time.time()) + 0.02)
        t0 = time.time()
        jobs = []
        for replica, (scenario, w) in enumerate(batch):
            x, cat = data.x[scenario][w], data.cat[scenario][w]
            for v in VARIANTS:
                jobs.append((model_name(v.name, replica), x, cat))
        if args.fake_gateway:
            start_ms = int(math.floor(t0 / W) * W * 1000)
            windows = [{"model": name, "version": 1, "arm": "stable", "start_ms": start_ms, "seconds": W,
                        "rows": WIN_ROWS, "profile": sketch_window(x, cat, edges)} for name, x, cat in jobs]
            gw.cp.ok("POST", "/cp/v1/gateways/harness-fake/report", {
                "applied_generation": 0,
                "loaded": [{"model": n, "version": 1, "manifest_digest": d} for n, d in digests.items()],
                "drift_windows": windows})
        else:
            list(pool.map(lambda job: send(*job), jobs))
        t1 = time.time()
        stats["send_s"] += t1 - t0
        first_window = math.floor(t0 / W) * W
        last_window = math.floor(t1 / W) * W
        # Every evaluation must keep the first window in its span: since = now - S <= first_window.
        eval_deadline = first_window + S - 0.15
        if not args.fake_gateway:
            time.sleep(max(0.0, last_window + W + 0.05 - time.time()))  # the window has closed
        stats["wait_s"] += time.time() - t1
        want = {model_name(v.name, replica): (v.name, scenario, w)
                for replica, (scenario, w) in enumerate(batch) for v in VARIANTS}
        got: dict[str, dict] = {}
        while want.keys() - got.keys() and time.time() < eval_deadline:
            asked = time.time() * 1000
            t2 = time.time()
            gw.cp.ok("POST", "/cp/v1/drift/evaluate")
            for name in want.keys() - got.keys():
                e = gw.latest(name)
                if e and e["evaluated_ms"] >= asked - 1 and e["rows"] == WIN_ROWS:
                    got[name] = e
            stats["eval_s"] += time.time() - t2
            if want.keys() - got.keys():
                time.sleep(0.1)
        next_start = last_window + S + 0.001
        redo = set()
        for name, (variant, scenario, w) in want.items():
            if name in got:
                e = got[name]
                results[(variant, scenario, w)] = Evaluated(e["features"], e["dataset"], e["rows"],
                                                            attempts.get((scenario, w), 0) + 1)
            else:
                redo.add((scenario, w))
        for key in sorted(redo):
            attempts[key] = attempts.get(key, 0) + 1
            if attempts[key] <= args.retries:
                pending.append(key)
                stats["retried"] += 1
            else:
                stats["failed"].append(key)
        if stats["rounds"] % 10 == 0 or redo:
            log(f"round {stats['rounds']}: {len(results)} evaluations, {len(pending)} windows to go"
                + (f", {len(redo)} to redo" if redo else ""))
    pool.shutdown()
    for conn in conns.values():
        conn.close()
    return results, stats


def live_flip(procs: Processes, args: argparse.Namespace, root: Path, token: str, reference: dict,
              data: Data, log) -> dict:
    """A second gateway with the evaluator running every second: unshifted rows, then rows shifted
    by LIVE_SHIFT sigma; counts the windows until modelgate_drift_status flips to 1."""
    workdir = root / "live"
    workdir.mkdir()
    (workdir / "token").write_text(token)
    build_repository(workdir, ["drift_live"])
    gw = Gateway(procs, args, workdir, ["drift_live"], token, live=True)
    gw.start()
    edges = gw.put_references({"auto": reference})
    W = args.live_window_seconds
    rng = np.random.default_rng(args.seed + 1)
    rows_per_s = WIN_ROWS / W
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=60)
    digests = gw.digests() if args.fake_gateway else {}
    buffered: dict = {"start": None, "x": [], "cat": []}

    def post_window() -> None:
        """Fake gateway: ships the rows of the window that just closed as a sync report."""
        if buffered["start"] is not None and buffered["x"]:
            x, cat = np.concatenate(buffered["x"]), np.concatenate(buffered["cat"])
            gw.cp.ok("POST", "/cp/v1/gateways/harness-fake/report", {
                "applied_generation": 0,
                "loaded": [{"model": n, "version": 1, "manifest_digest": d} for n, d in digests.items()],
                "drift_windows": [{"model": "drift_live", "version": 1, "arm": "stable",
                                   "start_ms": int(buffered["start"] * 1000), "seconds": W, "rows": len(x),
                                   "profile": sketch_window(x, cat, edges)}]})
        buffered.update(start=None, x=[], cat=[])

    def stream(shift: float, seconds: float, until=None) -> float | None:
        """Sends rows at WIN_ROWS per window for `seconds`; returns the time `until` held."""
        start = time.time()
        sent = 0
        while time.time() - start < seconds:
            due = int((time.time() - start) * rows_per_s) + args.batch
            while sent < due:
                x = (rng.standard_normal((args.batch, FEATURES)) + shift).astype(np.float32)
                cat = rng.choice(len(CATEGORY_P), args.batch, p=CATEGORY_P).astype(np.int64)
                if args.fake_gateway:
                    window = math.floor(time.time() / W) * W
                    if buffered["start"] != window:
                        post_window()
                        buffered["start"] = window
                    buffered["x"].append(x)
                    buffered["cat"].append(cat)
                else:
                    infer(conn, "drift_live", x, cat)
                sent += args.batch
            if args.fake_gateway and buffered["start"] is not None and time.time() >= buffered["start"] + W:
                post_window()
            if until is not None and until():
                return time.time()
            time.sleep(0.05)
        return None

    stream(0.0, 4 * W, until=lambda: gw.metric("drift_live") is not None)
    if gw.metric("drift_live") is None:
        gw.server.stop()
        return {"skipped": "the gateway's /metrics has no modelgate_drift_status{model=\"drift_live\"} "
                           "after 4 windows of traffic with the evaluator on"}
    stream(0.0, 2 * W)
    unshifted = gw.metric("drift_live")
    # The shift starts with a window, as a deploy or an upstream change would start somewhere.
    time.sleep(max(0.0, math.floor(time.time() / W) * W + W - time.time()))
    shift_at = time.time()
    flipped_at = stream(LIVE_SHIFT, 6 * W, until=lambda: gw.metric("drift_live") == 1.0)
    history = gw.cp.ok("GET", "/cp/v1/models/drift_live/drift?history=50").get("versions", {}).get("1", {}).get("evaluations", [])
    gw.server.stop()
    # When the control plane first said "drifted" after the shift: the rest is the way back to the
    # gateway (desired state, long poll, metric).
    drifted_ms = [e["evaluated_ms"] for e in history if e["dataset"]["drifted"] and e["evaluated_ms"] >= shift_at * 1000]
    first = min(drifted_ms) / 1000 if drifted_ms else None
    out = {"status_unshifted": unshifted, "windows": None if flipped_at is None else (flipped_at - shift_at) / W,
           "evaluated_drifted_windows": None if first is None else (first - shift_at) / W,
           "to_gateway_s": None if first is None or flipped_at is None else flipped_at - first}
    flip = "never" if out["windows"] is None else f"{out['windows']:.2f} windows"
    log(f"live: status {unshifted} unshifted, flipped after {flip}")
    return out


# ---------------------------------------------------------------------------------------------
# The comparison


def rate(flags: list[bool]) -> float | None:
    return 100.0 * sum(flags) / len(flags) if flags else None


@dataclass
class Comparison:
    rates: dict = field(default_factory=dict)  # (variant, tool, scenario, kind) -> %
    agree: dict = field(default_factory=dict)  # (variant, tool) -> [equal flags]
    diffs: dict = field(default_factory=dict)  # what -> [abs diffs]
    stats_used: dict = field(default_factory=dict)  # (variant, tool, kind) -> set of stat names
    missing: int = 0


def compare(results: dict[tuple[str, str, int], Evaluated],
            peers: dict[tuple[str, int], dict[str, dict[str, dict[str, PeerResult]]]]) -> Comparison:
    """Per (variant, feature, window): modelgate's verdict and statistic against each tool's."""
    out = Comparison()
    flags: dict = {}
    for (variant, scenario, w), ev in results.items():
        tools = peers.get((scenario, w), {}).get(variant, {})
        for f in [*NUMERIC, CAT]:
            kind = "cat" if f == CAT else "num"
            mg = ev.features.get(f)
            if not mg or "no_verdict" in mg:
                out.missing += 1
                continue
            out.stats_used.setdefault((variant, "modelgate", kind), set()).add(mg["stat"])
            flags.setdefault((variant, "modelgate", scenario, kind), []).append(bool(mg["drifted"]))
            for tool, by_feature in tools.items():
                p = by_feature.get(f)
                if p is None:
                    continue
                flags.setdefault((variant, tool, scenario, kind), []).append(p.drifted)
                out.agree.setdefault((variant, tool), []).append(p.drifted == bool(mg["drifted"]))
                out.agree.setdefault((variant, tool, kind), []).append(p.drifted == bool(mg["drifted"]))
                if p.test:
                    out.stats_used.setdefault((variant, tool, kind), set()).add(p.test)
                # Statistics: the same quantity on both sides.
                if tool == "numpy":
                    out.diffs.setdefault(f"psi {kind}", []).append(abs(mg["value"] - p.value))
                elif tool == "alibi" and kind == "num":
                    out.diffs.setdefault(f"{variant} ks D", []).append(abs(mg["value"] - p.distance))
                    out.diffs.setdefault(f"{variant} ks p", []).append(abs(mg["p_value"] - p.p_value))
                elif tool == "alibi":
                    out.diffs.setdefault(f"{variant} chi2 rel", []).append(
                        abs(mg["value"] - p.distance) / max(abs(p.distance), 1e-12))
                    out.diffs.setdefault(f"{variant} chi2 p", []).append(abs(mg["p_value"] - p.p_value))
                elif tool == "evidently" and variant == "auto":
                    out.diffs.setdefault(f"auto {'W normed' if kind == 'num' else 'JS'}", []).append(abs(mg["value"] - p.value))
    out.rates = {key: rate(v) for key, v in flags.items()}
    return out


def unshifted(scenario: str) -> bool:
    """Scenarios whose numeric features are not shifted (false positives) / categories not swapped."""
    return scenario in ("shift 0", "category swap 10 %")


def pooled_rate(results, variant: str, tool_flags) -> float | None:
    """The modelgate false-positive rate over every numeric (feature, window) with no shift."""
    flags = [bool(ev.features[f]["drifted"]) for (v, s, _), ev in results.items() if v == variant and unshifted(s)
             for f in NUMERIC if f in ev.features and "drifted" in ev.features[f]]
    return rate(flags)


def new_report() -> Report:
    """Made when the run starts, so that its load average 'before' is from then."""
    return Report("drift_through_gateway", "Drift verdicts through the gateway against Evidently, alibi-detect and numpy")


def build_report(report: Report, args, data: Data, results, comp: Comparison, stats: dict, live: dict | None,
                 preset_diff: float | None, timings: dict) -> Report:
    windows = len(next(iter(data.x.values())))
    mode = ("fake gateway: windows profiled in Python (datasketches) and posted as a sync report"
            if args.fake_gateway else "windows profiled by the gateway's profiler")
    report.add(f"Reference {REF_ROWS:,} rows x {FEATURES} N(0,1) FP32 features + 1 categorical (5 categories); "
               f"{windows} windows of {WIN_ROWS:,} rows per scenario, seed {args.seed}; {mode}; "
               f"{len(VARIANTS)} variants x {args.replicas} replicas of `drift16`; window {args.window_seconds} s, "
               f"span {args.drift_span} s; {stats['rounds']} rounds, {stats['retried']} windows re-sent, "
               f"{len(stats['failed'])} never evaluated, {comp.missing} (feature, window) pairs without a verdict. "
               + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".")

    r = comp.rates
    g = lambda *k: r.get(k)  # noqa: E731
    headers = ["scenario", "KS 10k mg %", "alibi %", "Evidently %", "KS 1k (auto) mg %", "alibi %", "Evidently %",
               "W normed mg %", "Evidently %", "PSI mg %", "numpy %"]
    rows = []
    for s, *_ in SCENARIOS:
        rows.append([s, g("ks", "modelgate", s, "num"), g("ks", "alibi", s, "num"), g("ks", "evidently", s, "num"),
                     g("auto_small", "modelgate", s, "num"), g("auto_small", "alibi", s, "num"),
                     g("auto_small", "evidently", s, "num"), g("auto", "modelgate", s, "num"),
                     g("auto", "evidently", s, "num"), g("psi", "modelgate", s, "num"), g("psi", "numpy", s, "num")])
    report.add("Numeric features: share of (feature, window) pairs flagged as drifted, in %\n\n" + markdown_table(headers, rows))
    headers = ["scenario", "chi² 10k mg %", "alibi %", "Evidently (GOF) %", "chi² 1k mg %", "alibi %",
               "Evidently (GOF) %", "JS mg %", "Evidently %", "PSI mg %", "numpy %"]
    rows = []
    for s, *_ in SCENARIOS:
        rows.append([s, g("ks", "modelgate", s, "cat"), g("ks", "alibi", s, "cat"), g("ks", "evidently", s, "cat"),
                     g("auto_small", "modelgate", s, "cat"), g("auto_small", "alibi", s, "cat"),
                     g("auto_small", "evidently", s, "cat"), g("auto", "modelgate", s, "cat"),
                     g("auto", "evidently", s, "cat"), g("psi", "modelgate", s, "cat"), g("psi", "numpy", s, "cat")])
    report.add("Categorical feature `CAT[0]`: share of windows flagged, in %. Evidently's `chisquare` is a "
               "goodness-of-fit test against the reference's proportions; modelgate and alibi-detect test "
               "homogeneity (`chi2_contingency`)\n\n" + markdown_table(headers, rows))

    def agree(key) -> str:
        flags = comp.agree.get(key)
        return "–" if not flags else f"{rate(flags):.1f} % of {len(flags):,}"

    rows = [[v.name, v.what, agree((v.name, "evidently", "num")), agree((v.name, "evidently", "cat")),
             agree((v.name, "alibi")), agree((v.name, "numpy")),
             ", ".join(f"{k}: {'/'.join(sorted(comp.stats_used.get((v.name, t, k), [])))}"
                       for t in ("modelgate", "evidently") for k in ("num", "cat")
                       if comp.stats_used.get((v.name, t, k)))]
            for v in VARIANTS]
    report.add("Verdicts equal to each tool's, over (feature, window) pairs\n\n" + markdown_table(
        ["variant", "reference and rule", "Evidently numeric", "Evidently CAT", "alibi-detect", "numpy", "tests used (modelgate, Evidently)"], rows))

    def dd(key) -> list[object]:
        d = comp.diffs.get(key)
        return ["–", "–"] if not d else [f"{np.mean(d):.2e}", f"{np.max(d):.2e}"]

    rows = [["KS D, 10k ref (sketch vs exact)", "alibi KSDrift distance", *dd("ks ks D")],
            ["KS p, 10k ref", "alibi KSDrift p", *dd("ks ks p")],
            ["KS D, 1k ref", "alibi KSDrift distance", *dd("auto_small ks D")],
            ["KS p, 1k ref", "alibi KSDrift p", *dd("auto_small ks p")],
            ["chi² statistic (relative), 10k ref", "alibi ChiSquareDrift", *dd("ks chi2 rel")],
            ["chi² p, 10k ref", "alibi ChiSquareDrift", *dd("ks chi2 p")],
            ["chi² p, 1k ref", "alibi ChiSquareDrift", *dd("auto_small chi2 p")],
            ["normed Wasserstein (sketch vs exact)", "Evidently wasserstein", *dd("auto W normed")],
            ["Jensen–Shannon, CAT", "Evidently jensenshannon", *dd("auto JS")],
            ["PSI, numeric, reference's edges", "numpy", *dd("psi num")],
            ["PSI, CAT", "numpy", *dd("psi cat")]]
    if preset_diff is not None:
        rows.append(["Evidently stattests vs the whole DataDriftPreset report", f"{args.evidently_reports} windows x 3 variants",
                     "–", f"{preset_diff:.2e}"])
    report.add("Statistics: |modelgate − tool| over every (feature, window)\n\n" + markdown_table(["statistic", "against", "mean", "max"], rows))

    if live is not None:
        if "skipped" in live:
            report.add(f"Live stream: not measured: {live['skipped']}.")
        else:
            flip = "no flip within 6 windows" if live["windows"] is None else f"{live['windows']:.2f} windows"
            first = live["evaluated_drifted_windows"]
            first_text = "never" if first is None else f"{first:.2f} windows"
            back_text = "–" if live["to_gateway_s"] is None else f"{live['to_gateway_s']:.2f} s"
            report.add(f"Live stream (window {args.live_window_seconds} s, evaluator every second, span 2 windows + 2 s): "
                       f"modelgate_drift_status {live['status_unshifted']} on unshifted traffic; after a "
                       f"{LIVE_SHIFT} sigma shift it flipped to 1 after {flip} (the control plane's first drifted "
                       f"evaluation came {first_text} after the shift; from there to the gateway's metric: {back_text}).")

    # Targets
    for variant in ("ks", "auto_small"):
        fp = pooled_rate(results, variant, None)
        if fp is not None:
            what = f"KS false positives ({VARIANT[variant].short}), unshifted numeric (feature, window) pairs"
            report.checks.append(Check(what, fp, 3.0, True, " %"))
            report.checks.append(Check(what, fp, 7.0, False, " %"))
        for s, shift, scale, swap in SCENARIOS:
            if shift or scale != 1:
                a, m = g(variant, "alibi", s, "num"), g(variant, "modelgate", s, "num")
                if a is not None and m is not None:
                    report.checks.append(Check(f"KS power vs alibi KSDrift, {s} ({VARIANT[variant].short}): {m:.1f} vs {a:.1f} %",
                                               abs(m - a), 3.0, False, " pp"))
            if swap:
                a, m = g(variant, "alibi", s, "cat"), g(variant, "modelgate", s, "cat")
                if a is not None and m is not None:
                    report.checks.append(Check(f"chi² power vs alibi ChiSquareDrift, {s} ({VARIANT[variant].short}): {m:.1f} vs {a:.1f} %",
                                               abs(m - a), 3.0, False, " pp"))
    flags = comp.agree.get(("auto", "evidently"))
    if flags:
        report.checks.append(Check("verdicts equal to Evidently DataDriftPreset (auto, 10k ref), all (feature, window)",
                                   rate(flags), 95.0, True, " %"))
    psi = comp.diffs.get("psi num", []) + comp.diffs.get("psi cat", [])
    if psi:
        report.checks.append(Check(f"PSI max |modelgate − numpy| on the reference's edges ({max(psi):.1e}), in units of 1e-6",
                                   max(psi) * 1e6, 1.0, False, ""))
    if preset_diff is not None:
        report.checks.append(Check(f"Evidently stattests equal the whole DataDriftPreset report (max |diff| {preset_diff:.1e}), "
                                   "in units of 1e-9", preset_diff * 1e9, 1.0, False, ""))
    if live is not None and "skipped" not in live:
        report.checks.append(Check("live 0.25 sigma shift flips modelgate_drift_status",
                                   live["windows"] if live["windows"] is not None else math.inf, 2.0, False, " windows"))
    if stats["failed"]:
        report.checks.append(Check("windows never evaluated on exactly their own rows", len(stats["failed"]), 0, False, ""))
    for (variant, scenario, w), ev in results.items():
        report.csv_rows.extend(
            {"variant": variant, "scenario": scenario, "window": w, "feature": f, "stat": v.get("stat"),
             "value": v.get("value"), "p_value": v.get("p_value"), "threshold": v.get("threshold"),
             "drifted": v.get("drifted"), "no_verdict": v.get("no_verdict")}
            for f, v in ev.features.items())
    return report


# ---------------------------------------------------------------------------------------------
# Self-test of the comparison on synthetic verdicts


def self_test() -> int:
    """compare() and the targets on made-up evaluations whose answers are known."""
    def res(drifted, value=0.0, p=None, d=None):
        return PeerResult(value, drifted, p, d)

    data = make_data(1, 2)
    results, peers = {}, {}
    for s, *_ in SCENARIOS:
        for w in range(2):
            mg = {f: {"stat": "ks", "value": 0.1, "p_value": 0.5, "threshold": 0.05, "drifted": False} for f in NUMERIC}
            mg[CAT] = {"stat": "chi_squared", "value": 1.0, "p_value": 0.5, "threshold": 0.05, "drifted": False}
            if s == "shift 0.25":
                for f in NUMERIC:
                    mg[f]["drifted"] = True
            results[("ks", s, w)] = Evaluated(mg, {}, WIN_ROWS, 1)
            psi = {f: {"stat": "psi", "value": 0.05 + 1e-9, "drifted": False} for f in [*NUMERIC, CAT]}
            results[("psi", s, w)] = Evaluated(psi, {}, WIN_ROWS, 1)
            alibi = {f: res(s == "shift 0.25" and f != NUMERIC[0], p=0.5, d=0.1) for f in NUMERIC}
            alibi[CAT] = res(False, p=0.5, d=1.0)
            peers[(s, w)] = {"ks": {"alibi": alibi}, "psi": {"numpy": {f: res(False, 0.05) for f in [*NUMERIC, CAT]}}}
    results[("ks", "shift 0", 0)].features[NUMERIC[3]] = {"no_verdict": "the window has 0 usable rows"}
    comp = compare(results, peers)
    expect = {
        ("ks", "modelgate", "shift 0.25", "num"): 100.0,
        ("ks", "alibi", "shift 0.25", "num"): 100.0 * 15 / 16,
        ("ks", "modelgate", "shift 0", "num"): 0.0,
        ("psi", "numpy", "shift 0", "cat"): 0.0,
    }
    failures = [f"{k}: {comp.rates.get(k)} != {v}" for k, v in expect.items() if comp.rates.get(k) != v]
    agree = comp.agree[("ks", "alibi")]
    if (len(agree), sum(agree)) != (6 * 2 * 17 - 1, 6 * 2 * 17 - 1 - 2):
        failures.append(f"agreement {sum(agree)}/{len(agree)}")
    if comp.missing != 1:
        failures.append(f"missing {comp.missing}")
    if not math.isclose(max(comp.diffs["psi num"]), 1e-9, rel_tol=1e-6):
        failures.append(f"psi diff {max(comp.diffs['psi num'])}")
    if pooled_rate(results, "ks", None) != 0.0:
        failures.append("pooled false positives")
    # numpy PSI from its definition: identical counts give 0, an empty bin is floored.
    if numpy_psi(np.array([5, 5]), np.array([5, 5])) != 0.0 or not np.isfinite(numpy_psi(np.array([0, 10]), np.array([5, 5]))):
        failures.append("numpy_psi")
    if bin_counts(np.array([-5.0, 0.0, 0.5, 1.0, 7.0]), np.array([0.0, 1.0])).tolist() != [1, 2, 2]:
        failures.append("bin_counts")
    print("self-test:", "ok" if not failures else "FAILED\n  " + "\n  ".join(failures))
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=30, help="windows per scenario (default 30)")
    ap.add_argument("--replicas", type=int, default=3, help="copies of each variant: windows evaluated per round")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=250, help="rows per infer request")
    ap.add_argument("--window-seconds", type=int, default=1, help="the gateway's [drift] window_seconds")
    ap.add_argument("--drift-span", type=int, default=3, help="the control plane's --drift-span (s)")
    ap.add_argument("--live-window-seconds", type=int, default=5,
                    help="window of the live check (the evaluator runs every window over a span of 2)")
    ap.add_argument("--retries", type=int, default=3, help="times a window is sent again when not evaluated alone")
    ap.add_argument("--evidently-reports", type=int, default=1,
                    help="windows per variant also run through the whole DataDriftPreset report (slow)")
    ap.add_argument("--binary", type=Path, default=REPO / "target" / "debug" / "modelgate")
    ap.add_argument("--fake-gateway", action="store_true", help="profile windows in Python, post them as a sync report")
    ap.add_argument("--no-live", action="store_true", help="skip the live modelgate_drift_status check")
    ap.add_argument("--readme", action="store_true", help="copy the table into load-tests/README.md")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    ap.add_argument("--self-test", action="store_true", help="check the comparison on synthetic verdicts and exit")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if args.drift_span < args.window_seconds + 1:
        ap.error("--drift-span must be at least --window-seconds + 1")
    if not args.binary.exists():
        ap.error(f"{args.binary} is missing: cargo build --bin modelgate")
    stop_on_sigterm()
    report = new_report()
    started = time.monotonic()
    timings: dict[str, float] = {}

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", flush=True)

    data = make_data(args.seed, args.windows)
    root = Path(tempfile.mkdtemp(prefix="drift-harness-", dir=REPO / "target"))
    token = (REPO / ".modelgate" / "admin-token").read_text().strip() if (REPO / ".modelgate" / "admin-token").exists() \
        else base64.b32encode(os.urandom(20)).decode()
    (root / "token").write_text(token)
    names = [model_name(v.name, r) for v in VARIANTS for r in range(args.replicas)]
    build_repository(root, names)
    references = {}
    for rows in (REF_ROWS, SMALL_REF_ROWS):
        csv = root / f"ref{rows}.csv"
        write_reference_csv(csv, data.ref[:rows], data.ref_cat[:rows])
        out = root / f"ref{rows}.json"
        subprocess.run([str(args.binary), "profile", str(csv), "--categorical", CAT, "-o", str(out)],
                       check=True, capture_output=True, cwd=REPO)
        base = json.loads(out.read_text())
        for v in VARIANTS:
            if v.reference_rows == rows:
                references[v.name] = {**base, "rules": {**base.get("rules", {}), **v.rules}}
    timings["set-up"] = time.monotonic() - started
    log(f"references built; {len(names)} models in {root / 'repo'}")

    # The peers run in a worker process meanwhile: one window after another, then the whole
    # DataDriftPreset reports. Nothing there needs the gateway.
    from concurrent.futures import ProcessPoolExecutor

    peer_pool = ProcessPoolExecutor(max_workers=1, initializer=peer_worker_init, initargs=(args.seed, args.windows))
    peer_futures = [peer_pool.submit(peer_worker_window, key) for key in data.window_ids()]
    ids = data.window_ids()
    picks = [ids[int(i)] for i in np.linspace(0, len(ids) - 1, args.evidently_reports)] if args.evidently_reports else []
    preset_futures = [peer_pool.submit(peer_worker_preset, v, key) for key in picks for v in ("ks", "auto", "auto_small")]

    live = None
    with Processes(RESULTS / "logs" / "drift_through_gateway") as procs:
        gw = Gateway(procs, args, root, names, token)
        gw.start()
        edges = gw.put_references(references)
        timings["gateway start"] = time.monotonic() - started - timings["set-up"]
        log("gateway up, references in force")
        t = time.monotonic()
        results, stats = collect(gw, data, edges, args, log)
        timings["rounds"] = time.monotonic() - t
        log(f"{len(results)} evaluations in {stats['rounds']} rounds (send {stats['send_s']:.0f} s, "
            f"wait {stats['wait_s']:.0f} s, evaluate+read {stats['eval_s']:.0f} s)")
        procs.stop(gw.server)
        if not args.no_live:
            t = time.monotonic()
            live = live_flip(procs, args, root, token, references["auto"], data, log)
            timings["live"] = time.monotonic() - t

    t = time.monotonic()
    done = sum(f.done() for f in peer_futures)
    log(f"waiting for the peers ({done} of {len(peer_futures)} windows done)")
    peers = {}
    for future in peer_futures:
        key, by_variant = future.result()
        by_variant["psi"] = {"numpy": numpy_psi_window(data, edges, data.x[key[0]][key[1]], data.cat[key[0]][key[1]])}
        peers[key] = by_variant
    preset_diff = max((f.result() for f in preset_futures), default=None)
    peer_pool.shutdown()
    timings["peers after the rounds"] = time.monotonic() - t
    comp = compare(results, peers)
    timings["total"] = time.monotonic() - started
    build_report(report, args, data, results, comp, stats, live, preset_diff, timings)
    report.write(args.readme)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root}")
    missed = [c for c in report.checks if not c.passed]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
