"""Writing results: a markdown table per script (results/<name>.md), the raw rows as CSV
(results/<name>.csv), target checks printed as ratios, and optionally the table copied into
load-tests/README.md between `<!-- BEGIN name -->` and `<!-- END name -->`.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from procs import REPO, RESULTS

README = REPO / "load-tests" / "README.md"


def machine() -> str:
    """CPU model, core count, memory, kernel: where the numbers come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                       if l.startswith("MemTotal"))
        memory = f"{mem_kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "? GiB"
    return f"{cpu}, {os.cpu_count()} cores, {memory}, Linux {platform.release()}"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return v if isinstance(v, str) else fmt(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(v: object) -> str:
    """Numbers with a precision that suits their size; None as a dash."""
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def marked(value: float | None, stable: bool) -> str:
    """A perf_analyzer figure, with * when its windows did not settle (see loadgen.perf_analyzer)."""
    return fmt(value) + ("*" if not stable else "")


UNSTABLE_NOTE = "\* perf_analyzer's windows varied by more than 25 % (busy machine); the figure is from a looser retry."


@dataclass
class Check:
    """One target: measured ratio against the bound."""

    what: str
    measured: float
    bound: float
    higher_is_better: bool = True
    unit: str = "×"

    @property
    def passed(self) -> bool:
        return self.measured >= self.bound if self.higher_is_better else self.measured <= self.bound

    def row(self) -> list[object]:
        op = "≥" if self.higher_is_better else "≤"
        return [self.what, f"{fmt(self.measured)}{self.unit}", f"{op} {fmt(self.bound)}{self.unit}",
                "met" if self.passed else "**missed**"]


@dataclass
class Report:
    """A script's results."""

    name: str
    title: str
    started: str = field(default_factory=lambda: datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    load_before: str = field(default_factory=load_average)
    sections: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    csv_rows: list[dict] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.sections.append(text)

    def markdown(self) -> str:
        head = (f"Run {self.started} on {machine()}; commit {git_revision()}. "
                f"Load average before: {self.load_before}, after: {load_average()}.")
        parts = [f"### {self.title}", "", head, ""]
        for section in self.sections:
            parts += [section, ""]
        if self.checks:
            parts += ["Targets:", "", markdown_table(["target", "measured", "bound", ""],
                                                      [c.row() for c in self.checks]), ""]
        return "\n".join(parts).rstrip() + "\n"

    def exit_code(self) -> int:
        """0 when every target was met, 1 when one was missed: a load test that misses fails."""
        return 0 if all(check.passed for check in self.checks) else 1

    def write(self, readme: bool) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        md = RESULTS / f"{self.name}.md"
        text = self.markdown()
        md.write_text(text)
        if self.csv_rows:
            with open(RESULTS / f"{self.name}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.csv_rows[0]))
                writer.writeheader()
                writer.writerows(self.csv_rows)
        print(text)
        for check in self.checks:
            print(f"{'PASS' if check.passed else 'MISS'}  {check.what}: {fmt(check.measured)}{check.unit} "
                  f"(target {'≥' if check.higher_is_better else '≤'} {fmt(check.bound)}{check.unit})")
        if readme:
            update_readme(self.name, text)
            print(f"updated {README.relative_to(REPO)} ({self.name})")
        return md


def update_readme(name: str, text: str) -> None:
    """Replaces the block between the BEGIN/END markers of `name` in load-tests/README.md."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    readme = README.read_text()
    if begin not in readme or end not in readme:
        raise RuntimeError(f"{README} has no {begin} ... {end} block")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{text}{end}{tail}")
