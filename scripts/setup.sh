#!/usr/bin/env bash
# Prepare this checkout on a fresh Debian 12 machine: native runtimes, Python venvs, test tools.
# Everything lands in git-ignored folders of the repo (.native/, .venv/) except the Debian
# packages. Safe to re-run: finished steps are detected and skipped in well under a second.
#
# Usage: scripts/setup.sh [--torch] [--no-apt] [COMPONENT...]
#
# Components (default: apt ort models client mlflow-server deploy-tools moto token ui; `torch` and
# `torch-python` only when asked for):
#   apt      Debian packages libb64-0d (perf_analyzer), wrk (HTTP load), nginx-light (HTTP floor),
#            postgresql-15 (the registry's tests start throwaway clusters: scripts/with-postgres.sh),
#            prometheus (its `promtool` checks and unit-tests deploy/prometheus/; tests/deploy starts
#            the server itself), chromium (the operations page's browser test, tests/ui),
#            nghttp2-client (nghttp and h2load: the HTTP/2 conformance checks, tests/compat/test_http2.py).
#            Installed with apt-get only when missing; needs root or sudo.
#   ort      ONNX Runtime 1.31.1 C library from the PyPI wheel -> .native/onnxruntime/lib/
#            (the gateway dlopens .native/onnxruntime/lib/libonnxruntime.so, see .cargo/config.toml)
#   models   .venv/models: onnx, onnxruntime, numpy (scripts/requirements-models.txt), used by
#            models/make_models.py and for reference outputs in tests.
#   client   .venv/client: tritonclient[all] 2.50.0 with its perf_analyzer binary, onnxruntime, pytest,
#            numpy, mlflow-skinny (scripts/requirements-client.txt). Run perf_analyzer via scripts/perf_analyzer.
#   mlflow-server  .venv/mlflow-server: the full `mlflow` 3.17.2 server (requirements-mlflow-server.txt,
#            about 850 MB), which tests/registry/test_mirror.py runs as the upstream of mirror mode.
#   deploy-tools  .venv/deploy-tools: kubernetes-validate (offline Kubernetes schemas), PyYAML, pytest
#            (scripts/requirements-deploy-tools.txt), used by tests/deploy/ on the manifests in
#            deploy/kubernetes/ (rendered with `kubectl kustomize`: kubectl comes with the machine image,
#            not from this script).
#   moto     .venv/moto: moto 5.2.1's server mode (scripts/requirements-moto.txt), the S3-compatible
#            server the control plane's object-storage test and load-tests/cluster/ start.
#   ui       the operations page (GET /admin/ui/ on the admin listener): its chart library uPlot
#            1.6.32 from npm (integrity-checked) -> .native/uplot/, embedded into the binary by
#            build.rs (a build without it serves the page with numbers only, and says so; after
#            installing it, `touch build.rs` and build again), and .venv/ui: Playwright + pytest
#            (scripts/requirements-ui.txt) for tests/ui/, driving Debian's chromium.
#   token    .modelgate/admin-token: a random bearer token (mode 0600) for the README's first command
#            (`serve --admin-token-file .modelgate/admin-token`: admin API and embedded control plane).
#   ort-gpu  ONNX Runtime 1.31.1 GPU build from the onnxruntime-gpu wheel (256 MB download): its
#            libonnxruntime.so with the CUDA execution provider beside it -> .native/onnxruntime-gpu/lib/.
#            Only for machines with an NVIDIA GPU, and not the default: point ORT_DYLIB_PATH at it. The
#            CUDA 13 and cuDNN 9 libraries it loads come from the nvidia wheels of the `torch-python`
#            component (put .venv/models/.../nvidia/{cu13,cudnn}/lib on LD_LIBRARY_PATH; README, GPU).
#   peers    the servers load-tests/peers.py compares modelgate with: .venv/pytriton (Python 3.12:
#            nvidia-pytriton 0.7.0 with tritonserver 2.51, onnxruntime; requirements-pytriton.txt)
#            and .venv/mlserver (mlserver 1.7.1, onnxruntime; requirements-mlserver.txt).
#            About 1.1 GiB on disk. Needs a Python 3.12 built with --enable-shared (pyenv's is).
#   torch    libtorch 2.13.0 (CPU libraries + headers from the PyPI torch wheel) -> .native/libtorch,
#            what `--features torch` builds against and what tests/torch.rs compares the gateway with.
#            Downloads the torch wheel and two small nvidia wheels; adds 0.5 GiB on disk.
#   torch-python  torch 2.13.0 in .venv/models (scripts/requirements-torch.txt), only to write
#            TorchScript (scripts/make_torchscript.py, scripts/make_torch_fixtures.py) and for the CUDA
#            libraries of a GPU run (README, GPU). Downloads 2.2 GiB (vs 2.6 GB for a plain
#            `pip install torch`) and adds 3.6 GiB to .venv/models, which is why the test suite
#            does not need it.
#
# Options and environment:
#   --torch, WITH_TORCH=1     add `torch` (libtorch) to the default components
#   --no-apt, SETUP_APT=0     skip the Debian packages (e.g. no root; install them yourself)
#   PYTHON=/path/to/python3   interpreter for pip downloads and venvs (>= 3.11; default python3)
#   PYTHON312=/path/to/python3.12  interpreter for .venv/pytriton (default: python3.12 on PATH,
#                             else pyenv's newest 3.12)
#   PEERS_VENV_ROOT=DIR       where `peers` puts its two venvs (default .venv)
#   -h, --help                print this text
#
# Examples:
#   scripts/setup.sh                  # everything except torch
#   scripts/setup.sh --torch          # everything the README's two commands need
#   scripts/setup.sh torch-python     # torch in Python, to write TorchScript models
#   scripts/setup.sh ort models       # only what the Rust build/tests and model making need
set -euo pipefail

script_path="${BASH_SOURCE[0]}"
cd "$(dirname "$script_path")/.."

readonly ORT_VERSION=1.31.1
readonly TORCH_VERSION=2.13.0
readonly NATIVE=.native
readonly WHEELS=$NATIVE/wheels          # download cache, deleted after a successful run
readonly APT_PACKAGES=(libb64-0d wrk nginx-light postgresql-15 prometheus chromium nghttp2-client)
# The operations page's chart library (npm) and the integrity npm's registry publishes for it.
readonly UPLOT_VERSION=1.6.32
readonly UPLOT_INTEGRITY=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
readonly PYTHON=${PYTHON:-python3}

# ---------------------------------------------------------------------------------------------
# Small helpers

log() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    # Print the comment block at the top of this file.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$script_path"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# Download wheels (no dependencies) into $WHEELS. pip skips files already there.
fetch_wheels() {
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir \
        --no-deps --only-binary=:all: -d "$WHEELS" "$@"
}

# The single wheel file in $WHEELS matching a glob, e.g. `wheel_file 'torch-2.13.0-*.whl'`.
wheel_file() {
    # shellcheck disable=SC2206  # $1 is a glob: expanding it is the point
    local matches=("$WHEELS"/$1)
    [[ -f "${matches[0]}" ]] || die "no wheel matching $1 in $WHEELS"
    printf '%s\n' "${matches[0]}"
}

# extract WHEEL DEST REGEX [--strip PREFIX]  (see scripts/extract_wheel.py)
extract() { "$PYTHON" scripts/extract_wheel.py "$@"; }

# The pinned "name==version" line for a package in scripts/requirements-torch.txt.
torch_pin() {
    grep -E "^$1==" scripts/requirements-torch.txt || die "$1 is not pinned in requirements-torch.txt"
}

file_hash() { sha256sum "$1" | cut -d' ' -f1; }

# ensure_venv NAME REQUIREMENTS: create .venv/NAME and install REQUIREMENTS into it, unless
# a stamp says exactly this requirements file was installed already.
ensure_venv() {
    ensure_venv_at ".venv/$1" "$2" "$PYTHON"
}

# ensure_venv_at DIR REQUIREMENTS INTERPRETER: the same for a venv at DIR made by INTERPRETER.
ensure_venv_at() {
    local venv=$1 requirements=$2 python=$3
    local stamp=$venv/.setup-stamp
    if [[ -x $venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$(file_hash "$requirements")" ]]; then
        log "$venv: up to date"
        return 0
    fi
    log "$venv: installing $requirements"
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    file_hash "$requirements" > "$stamp"
}

check_python() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=...)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than 3.11 (onnxruntime $ORT_VERSION needs >= 3.11)"
}

# ---------------------------------------------------------------------------------------------
# Steps

step_apt() {
    if [[ "${SETUP_APT:-1}" == 0 ]]; then
        log "apt: skipped (SETUP_APT=0 / --no-apt); needed: ${APT_PACKAGES[*]}"
        return 0
    fi
    local missing=() package
    for package in "${APT_PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" == installed ]] \
            || missing+=("$package")
    done
    if (( ${#missing[@]} == 0 )); then
        log "apt: ${APT_PACKAGES[*]} already installed"
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} yourself, or set SETUP_APT=0"
    local sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    log "apt: installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

step_ort() {
    install_ort onnxruntime shared
}

# The GPU build of the same ONNX Runtime, kept apart from the CPU one so that nothing changes for
# machines without a GPU. The TensorRT provider is left out (it needs TensorRT itself); the CUDA
# provider is loaded from the folder of libonnxruntime.so, so they stay together.
step_ort_gpu() {
    install_ort onnxruntime-gpu "shared cuda"
}

# Keeps the C library of the $1 wheel (onnxruntime or onnxruntime-gpu) and its providers $2 in
# .native/$1-$ORT_VERSION/lib, links .native/$1 to it, and checks that it loads.
install_ort() {
    local package=$1 providers=($2)
    local dir=$NATIVE/$package-$ORT_VERSION
    local lib=libonnxruntime.so.$ORT_VERSION
    local p have=1
    for p in "${providers[@]}"; do
        [[ -f $dir/lib/libonnxruntime_providers_$p.so ]] || have=0
    done
    if [[ -f $dir/lib/$lib && $have == 1 ]]; then
        log "$package: $dir already there"
    else
        log "$package: fetching the $package==$ORT_VERSION wheel for its C library"
        fetch_wheels "$package==$ORT_VERSION"
        # Extract into a temporary folder first so an interrupted run never looks finished.
        rm -rf "$dir.partial"
        local alternatives=${2// /|}
        extract "$(wheel_file "${package//-/_}-$ORT_VERSION-*.whl")" "$dir.partial/lib" \
            "^onnxruntime/capi/lib(onnxruntime\\.so\\.|onnxruntime_providers_($alternatives)\\.so\$)"
        rm -rf "$dir"
        mv "$dir.partial" "$dir"
    fi
    # libonnxruntime.so.1 is the SONAME (needed when linking at build time), libonnxruntime.so the
    # name .cargo/config.toml points ORT_DYLIB_PATH at.
    ln -sfn "$lib" "$dir/lib/libonnxruntime.so.1"
    ln -sfn "$lib" "$dir/lib/libonnxruntime.so"
    ln -sfn "$package-$ORT_VERSION" "$NATIVE/$package"
    check_ort_loads "$NATIVE/$package/lib/libonnxruntime.so"
}

# dlopen the library and ask it for its version, as the gateway will.
check_ort_loads() {
    "$PYTHON" - "$1" "$ORT_VERSION" <<'EOF'
import ctypes, sys
path, expected = sys.argv[1], sys.argv[2]
class OrtApiBase(ctypes.Structure):
    _fields_ = [("GetApi", ctypes.c_void_p), ("GetVersionString", ctypes.CFUNCTYPE(ctypes.c_char_p))]
lib = ctypes.CDLL(path)
lib.OrtGetApiBase.restype = ctypes.POINTER(OrtApiBase)
version = lib.OrtGetApiBase().contents.GetVersionString().decode()
if version != expected:
    sys.exit(f"setup.sh: error: {path} reports ONNX Runtime {version}, expected {expected}")
print(f"    {path} loads: ONNX Runtime {version}")
EOF
}

step_models() {
    ensure_venv models scripts/requirements-models.txt
}

step_client() {
    ensure_venv client scripts/requirements-client.txt
    if [[ ! -e .venv/client/bin/perf_analyzer ]]; then
        die "tritonclient did not install .venv/client/bin/perf_analyzer"
    fi
    # Run it once through the wrapper: a missing shared library fails here, not in a test.
    local output
    if output="$(scripts/perf_analyzer --version 2>&1)"; then
        log "client: scripts/perf_analyzer runs ($output)"
    else
        log "client: WARNING: scripts/perf_analyzer does not run (libb64-0d comes from the apt step):"
        printf '%s\n' "$output"
    fi
}

# .venv/mlflow-server: a real MLflow tracking server, the upstream the mirror test follows.
step_mlflow_server() {
    ensure_venv mlflow-server scripts/requirements-mlflow-server.txt
}

# .venv/deploy-tools: what tests/deploy/ validates the Kubernetes manifests with.
step_deploy_tools() {
    ensure_venv deploy-tools scripts/requirements-deploy-tools.txt
}

# .venv/moto: an S3-compatible server (moto_server) for the object-storage tests.
step_moto() {
    ensure_venv moto scripts/requirements-moto.txt
}

# .native/uplot: the three files of the uplot npm package that the operations page uses (the
# browser build, its stylesheet, the licence), taken from the pinned tarball after checking its
# sha512 against UPLOT_INTEGRITY. build.rs embeds them; nothing of them is committed.
step_uplot() {
    local dir=$NATIVE/uplot-$UPLOT_VERSION
    if [[ -f $dir/uPlot.iife.min.js && -f $dir/uPlot.min.css ]]; then
        log "uplot: $dir already there"
    else
        command -v npm >/dev/null || die "npm not found: install Debian's npm (or skip the ui component)"
        log "uplot: fetching uplot@$UPLOT_VERSION from npm"
        local work
        work=$(mktemp -d)
        (cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null)
        local tarball=$work/uplot-$UPLOT_VERSION.tgz
        [[ -f $tarball ]] || die "npm pack did not write $tarball"
        local integrity
        integrity="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
        [[ $integrity == "$UPLOT_INTEGRITY" ]] || die "uplot-$UPLOT_VERSION.tgz has integrity $integrity, expected $UPLOT_INTEGRITY"
        tar -xzf "$tarball" -C "$work" package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE
        rm -rf "$dir.partial"
        mkdir -p "$dir.partial"
        mv "$work"/package/dist/uPlot.iife.min.js "$work"/package/dist/uPlot.min.css "$work"/package/LICENSE "$dir.partial"/
        rm -rf "$work" "$dir"
        mv "$dir.partial" "$dir"
    fi
    ln -sfn "uplot-$UPLOT_VERSION" "$NATIVE/uplot"
}

step_ui() {
    step_uplot
    ensure_venv ui scripts/requirements-ui.txt
    if [[ -x /usr/bin/chromium ]]; then
        log "ui: /usr/bin/chromium is there for Playwright"
    else
        log "ui: WARNING: no /usr/bin/chromium (the apt step installs it): tests/ui cannot run"
    fi
}

# .modelgate/admin-token: a random bearer token (0600) for the admin API and the embedded control
# plane of the README's first command (`serve --admin-token-file .modelgate/admin-token`). Kept
# when it exists, so the CLI keeps working across set-ups.
step_token() {
    local token=.modelgate/admin-token
    if [[ -s $token ]]; then
        log "token: $token kept"
        return 0
    fi
    mkdir -p .modelgate
    (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$token")
    log "token: $token written (export MODELGATE_ADMIN_TOKEN=\$(cat $token) for the CLI)"
}

# The Python 3.12 interpreter for .venv/pytriton (Triton's Python backend is built for 3.12).
find_python312() {
    local candidate
    for candidate in "${PYTHON312:-}" "$(command -v python3.12 || true)" \
        "$(printf '%s\n' "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 | sort -V | tail -n 1)"; do
        # A pyenv shim exists on PATH even when 3.12 is not selected, and then fails: skip it quietly.
        if [[ -n $candidate && -x $candidate ]] \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    die "no Python 3.12 found for .venv/pytriton: install one (e.g. pyenv install 3.12) or set PYTHON312"
}

step_peers() {
    local root=${PEERS_VENV_ROOT:-.venv} python312 libdir
    python312=$(find_python312)
    libdir=$("$python312" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
    [[ -e $libdir/libpython3.12.so.1.0 ]] \
        || die "$python312 has no $libdir/libpython3.12.so.1.0 (Triton's Python backend needs a shared libpython)"
    ensure_venv_at "$root/pytriton" scripts/requirements-pytriton.txt "$python312"
    ensure_venv_at "$root/mlserver" scripts/requirements-mlserver.txt "$PYTHON"
    # Start nothing here; only check that the server binaries are where peers.py looks.
    local tritonserver=("$root"/pytriton/lib/python3.12/site-packages/pytriton/tritonserver/bin/tritonserver)
    [[ -x ${tritonserver[0]} ]] || die "nvidia-pytriton did not install its tritonserver binary"
    [[ -x $root/mlserver/bin/mlserver ]] || die "mlserver did not install its command"
    log "peers: tritonserver and mlserver installed under $root (Python 3.12 from $python312)"
}

# libtorch for the Rust `torch` feature (tch / torch-sys), "Route B" of
# shared/notes/native-backends.md §3.3: only the CPU libraries and headers of the torch wheel,
# plus libcudart.so.13 and libcupti.so.13 that libtorch_cpu.so NEEDS even without a GPU.
step_torch() {
    local dir=$NATIVE/libtorch-$TORCH_VERSION
    if [[ -f $dir/lib/libtorch_cpu.so && "$(cat "$dir/build-version" 2>/dev/null)" == "$TORCH_VERSION" ]]; then
        log "libtorch: $dir already there"
    else
        log "libtorch: fetching torch $TORCH_VERSION and two small nvidia wheels"
        fetch_wheels "$(torch_pin torch)" "$(torch_pin nvidia-cuda-runtime)" "$(torch_pin nvidia-cuda-cupti)"
        rm -rf "$dir.partial"
        extract "$(wheel_file "torch-$TORCH_VERSION-*.whl")" "$dir.partial" \
            '^torch/(include/|lib/(libtorch\.so|libtorch_cpu\.so|libc10\.so|libgomp\.so\.1|libshm\.so)$)' \
            --strip torch/
        extract "$(wheel_file 'nvidia_cuda_runtime-*.whl')" "$dir.partial/lib" '/libcudart\.so\.13$'
        extract "$(wheel_file 'nvidia_cuda_cupti-*.whl')" "$dir.partial/lib" '/libcupti\.so\.13$'
        echo "$TORCH_VERSION" > "$dir.partial/build-version"
        rm -rf "$dir"
        mv "$dir.partial" "$dir"
        # All of libtorch_cpu.so's NEEDED libraries must resolve from its own folder.
        "$PYTHON" -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$dir/lib/libtorch_cpu.so"
        log "libtorch: $dir/lib/libtorch_cpu.so loads"
    fi
    ln -sfn "libtorch-$TORCH_VERSION" "$NATIVE/libtorch"
}

# torch in .venv/models, installed with --no-deps from the minimal wheel set listed (and
# explained) in scripts/requirements-torch.txt, instead of the 2.6 GB default dependency tree.
# Only for writing TorchScript and for a GPU run's CUDA libraries: the tests need libtorch alone.
step_torch_python() {
    local requirements=scripts/requirements-torch.txt
    local stamp=.venv/models/.setup-stamp-torch
    step_models
    if [[ -f $stamp && "$(cat "$stamp")" == "$(file_hash "$requirements")" ]]; then
        log "torch-python: .venv/models already has torch $TORCH_VERSION"
        return 0
    fi
    log "torch-python: fetching the wheels in $requirements"
    fetch_wheels -r "$requirements"
    log "torch-python: installing them into .venv/models (--no-deps)"
    .venv/models/bin/python -m pip install --quiet --disable-pip-version-check \
        --no-deps --no-index --find-links "$WHEELS" -r "$requirements"
    .venv/models/bin/python -c 'import torch; print("    torch", torch.__version__, "imports")'
    file_hash "$requirements" > "$stamp"
}

# ---------------------------------------------------------------------------------------------

main() {
    local components=() with_torch=${WITH_TORCH:-0} arg
    for arg in "$@"; do
        case $arg in
            -h|--help) usage; exit 0 ;;
            --torch) with_torch=1 ;;
            --no-apt) export SETUP_APT=0 ;;
            apt|ort|ort-gpu|models|client|mlflow-server|deploy-tools|moto|token|ui|peers|torch|torch-python) components+=("$arg") ;;
            *) usage >&2; die "unknown argument: $arg" ;;
        esac
    done
    if (( ${#components[@]} == 0 )); then
        components=(apt ort models client mlflow-server deploy-tools moto token ui)
    fi
    if [[ $with_torch == 1 && ! " ${components[*]} " =~ " torch " ]]; then
        components+=(torch)
    fi

    check_python
    local start step_start component
    start=$(now)
    for component in "${components[@]}"; do
        step_start=$(now)
        "step_${component//-/_}"
        log "$component: done in $(elapsed "$step_start")"
    done
    rm -rf "$WHEELS"
    log "setup finished in $(elapsed "$start") (${components[*]})"
}

main "$@"
