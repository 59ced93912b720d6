"""Copy selected files out of a Python wheel (a zip file) into a directory.

Why: the native libraries this project needs (ONNX Runtime's C library, libtorch) are published
on PyPI only inside Python wheels, and PyPI is the only download host these machines reach.
`scripts/setup.sh` downloads those wheels with `pip download` and uses this helper to take out
just the shared libraries and headers. It uses only the standard library (no `unzip` needed).

Usage:
    python3 scripts/extract_wheel.py WHEEL DEST REGEX [--strip PREFIX]

Every member whose path matches REGEX (Python `re.search`) is written under DEST:
  * without --strip, flattened to DEST/<basename>;
  * with --strip PREFIX, to DEST/<path without PREFIX>, keeping sub-directories.
Shared libraries are made executable. Prints how many files and bytes were written.
"""

import argparse
import os
import re
import shutil
import sys
import zipfile


def destination(member: str, dest: str, strip: str | None) -> str:
    """Where one wheel member goes on disk."""
    if strip is None:
        return os.path.join(dest, os.path.basename(member))
    if not member.startswith(strip):
        raise ValueError(f"{member!r} does not start with --strip {strip!r}")
    return os.path.join(dest, member[len(strip):])


def copy_member(wheel: zipfile.ZipFile, member: str, target: str) -> int:
    """Write one member to `target` and return its size in bytes."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with wheel.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    is_shared_lib = ".so" in os.path.basename(member)
    os.chmod(target, 0o755 if is_shared_lib else 0o644)
    return wheel.getinfo(member).file_size


def extract(wheel_path: str, dest: str, pattern: str, strip: str | None) -> tuple[int, int]:
    """Extract the matching members; return (file count, total bytes)."""
    regex = re.compile(pattern)
    count = total = 0
    with zipfile.ZipFile(wheel_path) as wheel:
        for member in wheel.namelist():
            if member.endswith("/") or not regex.search(member):
                continue
            total += copy_member(wheel, member, destination(member, dest, strip))
            count += 1
    return count, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("dest")
    parser.add_argument("regex")
    parser.add_argument("--strip", default=None, help="path prefix to remove (keeps sub-dirs)")
    args = parser.parse_args()

    count, total = extract(args.wheel, args.dest, args.regex, args.strip)
    if count == 0:
        print(f"error: nothing in {args.wheel} matches {args.regex!r}", file=sys.stderr)
        return 1
    print(f"  extracted {count} file(s), {total / 2**20:.1f} MiB -> {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
