#!/usr/bin/env python3
"""Hold modelgate-sketch's drift statistics against the tools people trust.

Generates the data (reference 10,000 x N(0, 1) per trial; 1,000-row windows with mean shifts of
0 / 0.1 / 0.15 / 0.25 sigma and a scale of x1.2; a 5-category feature with and without a 10 %
category swap), runs the crate's `stats` example on it, and compares, trial by trial, with
scipy (`ks_2samp` exact, `wasserstein_distance`, `chi2_contingency`, `jensenshannon`) and numpy
(PSI on the crate's own bin edges). Also checks that Python's `datasketches` reads the crate's
KLL and frequent-items bytes and that the crate reads Python's KLL bytes.

Targets (control-plane notes 5.8): PSI within 1e-6 of numpy; KS D within 0.02 of scipy;
KS false positives at shift 0 within 5 +- 2 %; KS rejection rate within 3 pp of scipy's exact
KS (what alibi-detect's KSDrift calls) in every scenario; Evidently's `auto` verdict (normed
Wasserstein >= 0.1 for a 10,000-row reference) equal on >= 95 % of all numeric windows; chi-squared equal to
scipy's. Prints a table; exits 1 when a target is missed.

    python3 -m venv target/drift-venv
    target/drift-venv/bin/pip install -r scripts/requirements-drift.txt
    target/drift-venv/bin/python load-tests/drift/compare_stats.py [--trials 300] [--seed 7]
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from datasketches import frequent_strings_sketch, kll_doubles_sketch
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REF_ROWS, WIN_ROWS, ALPHA = 10_000, 1_000, 0.05
SCENARIOS = [  # name, mean shift (sigma), scale
    ("shift 0", 0.0, 1.0),
    ("shift 0.1", 0.1, 1.0),
    ("shift 0.15", 0.15, 1.0),
    ("shift 0.25", 0.25, 1.0),
    ("scale x1.2", 0.0, 1.2),
]
CATEGORY_P = np.array([0.4, 0.25, 0.15, 0.12, 0.08])


def build():
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "modelgate-sketch", "--example", "stats"],
        cwd=ROOT,
        check=True,
    )
    return os.path.join(ROOT, "target", "release", "examples", "stats")


def run_stats(binary, *args):
    out = subprocess.run([binary, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def floored(counts):
    """Evidently's get_binned_data(feel_zeroes=True), written here from its definition."""
    p = counts / counts.sum()
    smallest = p[p > 0].min()
    p[p == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
    return p


def numpy_psi(ref_counts, cur_counts):
    r, c = floored(ref_counts.astype(float)), floored(cur_counts.astype(float))
    return float(np.sum((r - c) * np.log(r / c)))


def bin_counts(values, edges):
    # The crate's bins: (-inf, e0), [e0, e1), ..., [e_last, inf).
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def hellinger(p, q):
    p, q = p / p.sum(), q / q.sum()
    return float(np.sqrt(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)) / np.sqrt(2))


def category_swap(rng, values, share):
    """Each row, with probability `share`, takes another category chosen uniformly."""
    swap = rng.random(values.shape) < share
    other = (values + rng.integers(1, len(CATEGORY_P), values.shape)) % len(CATEGORY_P)
    return np.where(swap, other, values)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--k", type=int, default=200, help="KLL k of the window profiles")
    ap.add_argument("--reference-k", type=int, default=2000, help="KLL k of the reference profiles")
    ap.add_argument("--binary", help="the built `stats` example (default: cargo build --release)")
    args = ap.parse_args()
    binary = args.binary or build()
    rng = np.random.default_rng(args.seed)
    failures = []

    def target(ok, what):
        if not ok:
            failures.append(what)
        return "ok" if ok else "MISSED"

    tmp = tempfile.mkdtemp(prefix="drift-compare-")
    refs = rng.standard_normal((args.trials, REF_ROWS))
    ref_path = os.path.join(tmp, "ref.npy")
    np.save(ref_path, refs)

    # Python -> Rust: a KLL sketch of reference 0 made by Python's datasketches.
    py_kll = kll_doubles_sketch(200)
    for v in refs[0]:
        py_kll.update(float(v))
    py_kll_path = os.path.join(tmp, "ref0.kll")
    with open(py_kll_path, "wb") as f:
        f.write(py_kll.serialize())

    rows = []
    compat = {}
    agree_all = windows_all = 0
    for name, shift, scale in SCENARIOS:
        wins = rng.normal(shift, scale, (args.trials, WIN_ROWS))
        win_path = os.path.join(tmp, "win.npy")
        np.save(win_path, wins)
        started = time.monotonic()
        out = run_stats(binary, "--reference", ref_path, "--windows", win_path, "--python-kll", py_kll_path,
                         "--k", str(args.k), "--reference-k", str(args.reference_k))
        rust_s = time.monotonic() - started

        if not compat:
            # Rust -> Python: the reference profile's KLL bytes, read by datasketches.
            profile = out["reference"]["profile"]
            sketch = kll_doubles_sketch.deserialize(base64.b64decode(profile["kll"]))
            py_deciles = [sketch.get_quantile(d / 10, inclusive=True) for d in range(1, 10)]
            compat["rust kll read by python"] = (
                sketch.n == REF_ROWS and py_deciles == out["reference"]["deciles"]
            )
            own = [py_kll.get_quantile(d / 10, inclusive=True) for d in range(1, 10)]
            compat["python kll read by rust"] = (
                out["python_kll"]["n"] == REF_ROWS and out["python_kll"]["deciles"] == own
            )

        d_diff, w_diff, psi_diff, js_diff, hel_diff = [], [], [], [], []
        rust_reject = scipy_reject = agree = 0
        for i, w in enumerate(out["windows"]):
            ref, win = refs[i], wins[i]
            ks = ks_2samp(ref, win)  # method="auto": exact at these sizes
            d_diff.append(abs(w["ks_d"] - ks.statistic))
            rust_reject += w["ks_p"] < ALPHA
            scipy_reject += ks.pvalue < ALPHA
            wn_scipy = wasserstein_distance(ref, win) / max(np.std(ref), 0.001)
            wn_rust = w["wasserstein"] / max(w["reference_std"], 0.001)
            w_diff.append(abs(wn_rust - wn_scipy))
            agree += w["auto"]["drifted"] == (wn_scipy >= 0.1)
            edges = np.array(w["edges"])
            rc, cc = bin_counts(ref, edges), bin_counts(win, edges)
            assert rc.tolist() == w["reference_bins"] and cc.tolist() == w["bins"], "bin counts differ"
            psi_diff.append(abs(w["psi"] - numpy_psi(rc, cc)))
            js_diff.append(abs(w["js"] - jensenshannon(rc, cc)))
            hel_diff.append(abs(w["hellinger"] - hellinger(rc, cc)))
        n = len(out["windows"])
        agree_all += agree
        windows_all += n
        rust_rate, scipy_rate = 100 * rust_reject / n, 100 * scipy_reject / n
        checks = [
            target(max(psi_diff) <= 1e-6, f"{name}: PSI max |diff| {max(psi_diff):.1e} > 1e-6"),
            target(max(d_diff) <= 0.02, f"{name}: KS D max |diff| {max(d_diff):.4f} > 0.02"),
            target(abs(rust_rate - scipy_rate) <= 3, f"{name}: KS rejections {rust_rate:.1f} % vs scipy {scipy_rate:.1f} %"),
        ]
        if shift == 0 and scale == 1:
            checks.append(target(3 <= rust_rate <= 7, f"{name}: KS false positives {rust_rate:.1f} % not in 5 +- 2 %"))
        rows.append(
            [
                name,
                f"{max(psi_diff):.1e}",
                f"{max(js_diff):.1e}",
                f"{max(hel_diff):.1e}",
                f"{np.mean(d_diff):.4f} / {max(d_diff):.4f}",
                f"{rust_rate:.1f}",
                f"{scipy_rate:.1f}",
                f"{np.mean(w_diff):.4f} / {max(w_diff):.4f}",
                f"{100 * agree / n:.1f}",
                f"{rust_s:.1f}",
                "ok" if all(c == "ok" for c in checks) else "MISSED",
            ]
        )

    # The notes' target is over all (feature, window) pairs: at a 0.1 sigma shift the true normed
    # Wasserstein is 0.1, the threshold itself, so any estimate flips about half the windows near
    # it and that scenario alone says little.
    agree_share = 100 * agree_all / windows_all
    target(agree_share >= 95, f"auto verdicts agree on {agree_share:.1f} % of all numeric windows")

    # Categorical: chi-squared and JS against scipy on exact counts.
    cat_rows = []
    cat_refs = rng.choice(len(CATEGORY_P), (args.trials, REF_ROWS), p=CATEGORY_P).astype(np.int64)
    cat_ref_path = os.path.join(tmp, "cat_ref.npy")
    np.save(cat_ref_path, cat_refs)
    for name, share in [("categories, no swap", 0.0), ("categories, 10 % swap", 0.1)]:
        wins = rng.choice(len(CATEGORY_P), (args.trials, WIN_ROWS), p=CATEGORY_P).astype(np.int64)
        wins = category_swap(rng, wins, share)
        win_path = os.path.join(tmp, "cat_win.npy")
        np.save(win_path, wins)
        out = run_stats(binary, "--reference", cat_ref_path, "--windows", win_path, "--categorical")
        if "python reads rust frequent items" not in compat:
            profile = out["reference"]["profile"]
            fi = frequent_strings_sketch.deserialize(base64.b64decode(profile["items"]))
            compat["python reads rust frequent items"] = all(
                fi.get_lower_bound(item) == count for item, count in out["reference"]["counts"][0]
            ) and fi.total_weight == REF_ROWS
        stat_diff, p_diff, js_diff = [], [], []
        rust_reject = scipy_reject = 0
        for i, w in enumerate(out["windows"]):
            cats = np.arange(len(CATEGORY_P))
            rc = np.array([(cat_refs[i] == c).sum() for c in cats])
            cc = np.array([(wins[i] == c).sum() for c in cats])
            keep = (rc + cc) > 0
            table = np.array([rc[keep], cc[keep]])
            assert sorted(map(tuple, table.T.tolist())) == sorted(map(tuple, w["table"])), "tables differ"
            stat, p, _, _ = chi2_contingency(table, correction=False)
            stat_diff.append(abs(w["chi2"] - stat) / max(stat, 1e-12))
            p_diff.append(abs(w["chi2_p"] - p))
            js_diff.append(abs(w["js"] - jensenshannon(rc, cc)))
            rust_reject += w["chi2_p"] < ALPHA
            scipy_reject += p < ALPHA
        n = len(out["windows"])
        ok = max(stat_diff) <= 1e-9 and max(p_diff) <= 1e-9 and rust_reject == scipy_reject
        target(ok, f"{name}: chi-squared differs from scipy")
        cat_rows.append(
            [name, f"{max(stat_diff):.1e}", f"{max(p_diff):.1e}", f"{max(js_diff):.1e}",
             f"{100 * rust_reject / n:.1f}", f"{100 * scipy_reject / n:.1f}", "ok" if ok else "MISSED"]
        )

    for what, ok in compat.items():
        target(ok, f"sketch bytes: {what}")

    print(f"reference {REF_ROWS} x N(0,1) per trial (KLL k={args.reference_k}), windows of {WIN_ROWS} "
          f"(k={args.k}), {args.trials} trials, seed {args.seed}, alpha {ALPHA}")
    print("numeric (max |diff| vs numpy/scipy; KS and W as mean / max |diff|; rejection rates in %):")
    header = ["scenario", "PSI", "JS", "Hellinger", "KS D", "KS rej rust", "KS rej scipy",
              "W normed", "auto agree %", "rust s", "targets"]
    print_table(header, rows)
    print("categorical (chi-squared without Yates vs scipy chi2_contingency(correction=False)):")
    print_table(["scenario", "chi2 rel", "p", "JS", "rej rust", "rej scipy", "targets"], cat_rows)
    print(f"auto verdicts (normed Wasserstein >= 0.1) equal to scipy's on {agree_share:.1f} % of all "
          f"{windows_all} numeric windows (target >= 95 %)")
    for what, ok in compat.items():
        print(f"{what}: {'ok' if ok else 'MISSED'}")
    if failures:
        print("\nMISSED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall targets met")
    return 0


def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    sys.exit(main())
