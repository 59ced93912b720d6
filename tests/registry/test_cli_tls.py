"""`modelgate registry` against a control plane behind a TLS-terminating proxy with a test CA:
`--ca-file` makes the private CA trusted (push, list), and without it the call fails naming the
certificate. The CLI is target/debug/modelgate (`cargo build --bin modelgate`)."""

import os
import subprocess
import urllib.parse

from conftest import REPO, TOKEN, TlsProxy, running_control_plane, tls_files

MODELGATE = REPO / "target" / "debug" / "modelgate"


def _registry(address, *args, ca=None):
    flags = ["--address", address, *(["--ca-file", str(ca)] if ca else [])]
    env = {k: v for k, v in os.environ.items() if k != "MODELGATE_CP_CA_FILE"}
    env.update(MODELGATE_ADMIN_TOKEN=TOKEN, RUST_LOG="warn")
    return subprocess.run([str(MODELGATE), "registry", *flags, *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_the_registry_cli_works_over_https_with_its_ca_file_and_names_an_untrusted_certificate(tmp_path):
    ca, cert, key = tls_files(tmp_path)
    model = tmp_path / "fraud"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(os.urandom(4096))
    with running_control_plane(tmp_path / "data") as cp:
        proxy = TlsProxy(cert, key, urllib.parse.urlsplit(cp).port)
        try:
            https = f"https://localhost:{proxy.port}"
            refused = _registry(https, "versions", "fraud")
            assert refused.returncode != 0 and "certificate" in refused.stderr, refused.stderr

            not_pem = tmp_path / "not.pem"
            not_pem.write_text("no certificate here\n")
            bad = _registry(https, "versions", "fraud", ca=not_pem)
            assert bad.returncode != 0 and "--ca-file" in bad.stderr and "not.pem" in bad.stderr, bad.stderr

            pushed = _registry(https, "push", "fraud", str(model), "--alias", "champion", ca=ca)
            assert pushed.returncode == 0, pushed.stderr
            listed = _registry(https, "versions", "fraud", ca=ca)
            assert listed.returncode == 0, listed.stderr
            assert "champion" in listed.stdout, listed.stdout
            # The plain address form still speaks HTTP to the listener itself.
            assert _registry(urllib.parse.urlsplit(cp).netloc, "versions", "fraud").returncode == 0
        finally:
            proxy.close()
