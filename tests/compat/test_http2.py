"""HTTP/2 conformance of both data-plane ports (h2c with prior knowledge).

h2spec cannot be installed here, so this checks what matters to a client with Debian's
nghttp2-client (`nghttp`, `h2load`; scripts/setup.sh apt) and, for what no well-behaved
client sends, with raw frames written on a socket:

- prior knowledge works and the server's SETTINGS are what server.rs configures;
- many concurrent streams on one connection; streams past the advertised limit are refused;
- a header block over the limit gets 431 and the connection goes on;
- a client's small flow-control window is honoured (DATA frames never larger than it);
- protocol violations (bad preface, DATA on stream 0, HEADERS on an even stream, a window
  overflow, invalid SETTINGS, a rapid-reset flood) end in GOAWAY or RST_STREAM with the error
  code RFC 9113 names, within seconds, and the server goes on serving other connections.
"""

import re
import shutil
import socket
import struct
import subprocess
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
# SETTINGS parameters.
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 0x4, 0x5
# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x7, 0xB

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What src/server.rs configures (server.max_concurrent_streams defaults to 1024).
SERVER_SETTINGS = {
    "SETTINGS_MAX_CONCURRENT_STREAMS(0x03)": 1024,
    "SETTINGS_INITIAL_WINDOW_SIZE(0x04)": 1 << 20,
    "SETTINGS_MAX_FRAME_SIZE(0x05)": 1 << 20,
    "SETTINGS_MAX_HEADER_LIST_SIZE(0x06)": 64 << 10,
}
# Seconds any one answer may take: a violation answered by silence fails instead of hanging.
ANSWER_SECONDS = 10


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/setup.sh apt (Debian package nghttp2-client)")
    return path


@pytest.fixture(params=["http", "grpc"])
def port(request, http_url, grpc_url):
    """Each test runs against both data-plane ports: both speak h2c."""
    return int((http_url if request.param == "http" else grpc_url).rsplit(":", 1)[1])


def nghttp(port, path, *args, timeout=60):
    """`nghttp -v` (prior knowledge) for one request; its output, after it exited 0."""
    # -n: the response bodies are not printed (only the frames are of interest).
    command = [tool("nghttp"), "-v", "-n", "-t", str(ANSWER_SECONDS), *args, f"http://127.0.0.1:{port}{path}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command[:6]}... exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def statuses(out):
    """The :status of each response in nghttp -v's output."""
    return [int(s) for s in re.findall(r"recv \(stream_id=\d+\) :status: (\d+)", out)]


def served_after(port):
    """A fresh connection is served: the violation cost only its own connection."""
    assert statuses(nghttp(port, "/v2/health/ready")) == [200]


# --- raw frames -------------------------------------------------------------------------------


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first=0):
    """An HPACK integer (RFC 7541 §5.1) in a prefix of `prefix_bits` bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def header_block(method, path, extra=()):
    """A request's header block, every field a literal without indexing and without Huffman
    coding (the simplest valid encoding: no dynamic table on either side)."""
    def literal(name, value):
        return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value

    fields = [(b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", b"127.0.0.1"), *extra]
    return b"".join(literal(name, value) for name, value in fields)


# HPACK's static table entries of :status (RFC 7541 Appendix A) and the Huffman codes of the
# digits (Appendix B): enough to read the :status a server sends, which leads its header block.
STATIC_STATUS = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
HUFFMAN_DIGITS = {(0b00000, 5): "0", (0b00001, 5): "1", (0b00010, 5): "2", (0b011001, 6): "3", (0b011010, 6): "4",
                  (0b011011, 6): "5", (0b011100, 6): "6", (0b011101, 6): "7", (0b011110, 6): "8", (0b011111, 6): "9"}


def status(block):
    """The :status of a response header block: its first field, indexed or a literal whose name
    is static entry 8."""
    first = block[0]
    if first & 0x80:
        return STATIC_STATUS[first & 0x7F]
    # Literal with incremental indexing (01xxxxxx), without indexing (0000xxxx) or never indexed (0001xxxx).
    name = first & 0x3F if first & 0x40 else first & 0x0F
    assert name == 8, f"the block does not start with :status: {block[:8]!r}"
    huffman, length = block[1] & 0x80, block[1] & 0x7F
    value = block[2:2 + length]
    if not huffman:
        return int(value)
    bits = "".join(f"{byte:08b}" for byte in value)
    digits, code, width = "", 0, 0
    for bit in bits:
        code, width = code << 1 | int(bit), width + 1
        if (code, width) in HUFFMAN_DIGITS:
            digits, code, width = digits + HUFFMAN_DIGITS[(code, width)], 0, 0
    # What is left is padding: at most 7 one bits.
    assert width < 8 and code == (1 << width) - 1, f"not a status: {value!r}"
    return int(digits)


def settings(*pairs, flags=0):
    return frame(SETTINGS, flags, 0, b"".join(struct.pack(">HI", key, value) for key, value in pairs))


class Raw:
    """An h2c connection on a plain socket: frames as written, frames as read."""

    def __init__(self, port, preface=PREFACE, client_settings=()):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS)
        self.buffer = b""
        self.sock.sendall(preface + settings(*client_settings))

    def send(self, *frames):
        self.sock.sendall(b"".join(frames))

    def _read(self, n, deadline):
        while len(self.buffer) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"no answer within {ANSWER_SECONDS} s: the server hangs") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def next_frame(self, deadline):
        """`(type, flags, stream, payload)`, or None when the server closed the connection."""
        head = self._read(9, deadline)
        if head is None:
            return None
        length = int.from_bytes(head[:3], "big")
        payload = self._read(length, deadline) if length else b""
        if payload is None:
            return None
        return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF, payload

    def until(self, wanted):
        """Frames up to and including the first for which `wanted` is true; fails on a close or
        a timeout first. Answers the server's PINGs so keep-alive never ends a test early."""
        deadline = time.monotonic() + ANSWER_SECONDS
        seen = []
        while True:
            got = self.next_frame(deadline)
            if got is None:
                raise AssertionError(f"the connection closed without the frame awaited; frames: {summary(seen)}")
            seen.append(got)
            if wanted(got):
                return got, seen
            if got[0] == PING and not got[1] & ACK:
                self.send(frame(PING, ACK, 0, got[3]))

    def goaway(self):
        """The GOAWAY's error code, after which the server must close the connection."""
        got, _ = self.until(lambda f: f[0] == GOAWAY)
        code = struct.unpack(">I", got[3][4:8])[0]
        deadline = time.monotonic() + ANSWER_SECONDS
        while self.next_frame(deadline) is not None:
            pass
        return code

    def close(self):
        self.sock.close()


def summary(frames):
    return [(kind, flags, stream, len(payload)) for kind, flags, stream, payload in frames]


@pytest.fixture
def raw(port):
    connections = []

    def connect(**kwargs):
        connection = Raw(port, **kwargs)
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        connection.close()


# --- well-behaved clients ---------------------------------------------------------------------


def test_prior_knowledge_is_served_with_the_configured_settings(port):
    out = nghttp(port, "/v2/health/ready")
    assert statuses(out) == [200], out
    # nghttp -v prints each SETTINGS entry of the server's first SETTINGS frame as [NAME(0xNN):value].
    first_settings = out.split("recv SETTINGS frame", 1)[1].split("frame <", 1)[0]
    advertised = {name: int(value) for name, value in re.findall(r"\[(SETTINGS_\w+\(0x0\d\)):(\d+)\]", first_settings)}
    for name, value in SERVER_SETTINGS.items():
        assert advertised.get(name) == value, f"{name}: {advertised}"
    assert re.search(r"recv SETTINGS frame <length=0, flags=0x01", out), "our SETTINGS were not acknowledged"


def test_many_concurrent_streams_on_one_connection_all_succeed(port):
    # 4,000 requests, 500 streams at a time, one connection: more than fit at once in 1024 streams
    # is left to h2load, which waits for the server's limit.
    command = [tool("h2load"), "-n", "4000", "-c", "1", "-m", "500", "-T", str(ANSWER_SECONDS),
               f"http://127.0.0.1:{port}/v2/health/ready"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    assert "Application protocol: h2c" in out, out
    assert re.search(r"requests: 4000 total, 4000 started, 4000 done, 4000 succeeded, 0 failed, 0 errored, 0 timeout", out), out
    assert re.search(r"status codes: 4000 2xx, 0 3xx, 0 4xx, 0 5xx", out), out


def test_streams_past_the_advertised_limit_are_refused_and_the_connection_goes_on(raw):
    connection = raw()
    # 1024 requests whose bodies never come hold every stream the server allows, and 4 more.
    # (POST to the inference route: its handler waits for the body, so no stream ends early.)
    path = b"/v2/models/mlp/infer"
    block = header_block(b"POST", path, [(b"content-type", b"application/json")])
    streams = [1 + 2 * i for i in range(1024 + 4)]
    connection.send(*(frame(HEADERS, END_HEADERS, stream, block) for stream in streams))
    refused = set()
    while len(refused) < 4:
        got, _ = connection.until(lambda f: f[0] in (RST_STREAM, GOAWAY))
        assert got[0] == RST_STREAM, f"GOAWAY instead of a refused stream: {got}"
        assert struct.unpack(">I", got[3])[0] == REFUSED_STREAM, got
        refused.add(got[2])
    assert refused == set(streams[-4:]), f"refused {sorted(refused)}, not the streams past the limit"
    # The connection is still good: a stream of the first 1024 can be ended and answered.
    connection.send(frame(DATA, END_STREAM, streams[0], b"{}"))
    got, _ = connection.until(lambda f: f[0] in (HEADERS, RST_STREAM, GOAWAY) and f[2] == streams[0] or f[0] == GOAWAY)
    assert got[0] == HEADERS, got


def test_a_header_block_over_the_limit_is_answered_431_and_the_connection_goes_on(raw):
    # Raw frames: nghttp refuses to send a header block this large itself.
    big = b"x" * (70 << 10)
    connection = raw()
    connection.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, header_block(b"GET", b"/v2/health/ready", [(b"x-big", big)])))
    connection.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, header_block(b"GET", b"/v2/health/ready")))
    got, seen = connection.until(lambda f: f[0] == HEADERS and f[2] == 3)
    assert status(got[3]) == 200
    answers = [f for f in seen if f[0] == HEADERS and f[2] == 1]
    assert answers and status(answers[0][3]) == 431, summary(seen)
    assert not any(f[0] in (RST_STREAM, GOAWAY) for f in seen), summary(seen)


def identity_fp64_request(n):
    """A binary-tensor request to `identity` (every IN_<T> required) asking for OUT_FP64 only:
    its response carries 8n bytes of random tensor data (which gzip, which nghttp asks for,
    shrinks little)."""
    kinds = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
             "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}
    inputs = []
    for name, dtype in kinds.items():
        if name == "BYTES":
            value = np.array([[b"b"] * n], dtype=np.object_)
        elif name == "FP64":
            value = np.random.default_rng(17).random((1, n))
        else:
            value = (np.arange(n) % 2).astype(dtype).reshape(1, n)
        tensor = httpclient.InferInput(f"IN_{name}", [1, n], name)
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput("OUT_FP64", binary_data=True)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs)
    return body, json_size


def test_a_small_flow_control_window_is_honoured(port, tmp_path):
    n = 16 << 10
    body, json_size = identity_fp64_request(n)
    request = tmp_path / "request.bin"
    request.write_bytes(body)
    args = ["-d", str(request), "-H", "content-type: application/octet-stream",
            "-H", f"inference-header-content-length: {json_size}"]
    # Windows of 2^10 - 1 bytes, for the stream and for the connection, against 128 KiB of tensor data.
    out = nghttp(port, "/v2/models/identity/infer", "-w", "10", "-W", "10", *args)
    assert statuses(out) == [200], out[-3000:]
    lengths = [int(x) for x in re.findall(r"recv DATA frame <length=(\d+)", out)]
    # Random doubles in [0, 1) gzip by a few per cent only: still about a hundred full windows.
    assert sum(lengths) > 100_000, f"{sum(lengths)} bytes of response for {8 * n} bytes of tensor data"
    assert max(lengths) <= 1023, f"a DATA frame of {max(lengths)} bytes into a window of 1023"


# --- protocol violations ----------------------------------------------------------------------


def test_a_bad_preface_gets_goaway_or_a_close_not_a_hang(port, raw):
    # The HTTP/2 preface with its last line wrong: hyper-util's protocol sniffing has committed to
    # HTTP/2 by then, so h2 must refuse it (RFC 9113 §3.4: connection error PROTOCOL_ERROR).
    connection = raw(preface=b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    deadline = time.monotonic() + ANSWER_SECONDS
    frames = []
    while (got := connection.next_frame(deadline)) is not None:
        frames.append(got)
    goaways = [struct.unpack(">I", f[3][4:8])[0] for f in frames if f[0] == GOAWAY]
    assert goaways in ([], [PROTOCOL_ERROR]), summary(frames)
    served_after(port)


def test_data_on_stream_zero_is_a_protocol_error(port, raw):
    connection = raw()
    connection.send(frame(DATA, 0, 0, b"hello"))
    assert connection.goaway() == PROTOCOL_ERROR
    served_after(port)


def test_headers_on_an_even_stream_are_a_protocol_error(port, raw):
    connection = raw()
    connection.send(frame(HEADERS, END_HEADERS | END_STREAM, 2, header_block(b"GET", b"/v2/health/ready")))
    assert connection.goaway() == PROTOCOL_ERROR
    served_after(port)


def test_a_connection_window_overflow_is_a_flow_control_error(port, raw):
    connection = raw()
    # 65,535 (the initial window) + 2^31 - 1 is past the 2^31 - 1 a window may reach (§6.9.1).
    connection.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFF_FFFF)))
    assert connection.goaway() == FLOW_CONTROL_ERROR
    served_after(port)


def test_a_stream_window_overflow_resets_only_that_stream(port, raw):
    connection = raw()
    block = header_block(b"POST", b"/v2/models/mlp/infer", [(b"content-type", b"application/json")])
    connection.send(frame(HEADERS, END_HEADERS, 1, block), frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0x7FFF_FFFF)))
    got, seen = connection.until(lambda f: f[0] in (RST_STREAM, GOAWAY))
    assert (got[0], got[2], struct.unpack(">I", got[3][:4])[0]) == (RST_STREAM, 1, FLOW_CONTROL_ERROR), summary(seen)
    # The connection goes on: another stream is served.
    connection.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, header_block(b"GET", b"/v2/health/ready")))
    got, seen = connection.until(lambda f: f[0] == HEADERS and f[2] == 3 or f[0] == GOAWAY)
    assert got[0] == HEADERS and status(got[3]) == 200, summary(seen)


def test_invalid_settings_are_connection_errors(port, raw):
    # A max frame size under 16,384 is PROTOCOL_ERROR (§6.5.2). An initial window past 2^31 - 1
    # should be FLOW_CONTROL_ERROR there, but the h2 crate (0.4) rejects every invalid setting
    # value as PROTOCOL_ERROR: a known deviation of the library, harmless (the connection still
    # ends at once with a GOAWAY), checked as it is so that a change shows.
    assert raw(client_settings=[(INITIAL_WINDOW_SIZE, 0x8000_0000)]).goaway() == PROTOCOL_ERROR
    assert raw(client_settings=[(MAX_FRAME_SIZE, 1000)]).goaway() == PROTOCOL_ERROR
    served_after(port)


def test_a_rapid_reset_flood_is_answered_with_enhance_your_calm(port, raw):
    # CVE-2023-44487: streams opened and reset at once, faster than the server accepts them.
    # server.rs allows 20 pending resets a connection; 2,000 is far past it.
    connection = raw()
    block = header_block(b"GET", b"/v2/health/ready")
    burst = []
    for i in range(2000):
        stream = 1 + 2 * i
        burst += [frame(HEADERS, END_HEADERS, stream, block), frame(RST_STREAM, 0, stream, struct.pack(">I", 0x8))]
    try:
        connection.send(*burst)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before taking the whole burst; its GOAWAY is already buffered
    assert connection.goaway() == ENHANCE_YOUR_CALM
    served_after(port)
