-- wrk script: POST the body stored in the file named after `--`, and print one
-- machine-readable summary line (prefix WRK_JSON) that load-tests/loadgen.py parses.
--   wrk -t1 -c64 -d5s -s load-tests/post.lua http://127.0.0.1:PORT/v2/models/mlp/infer -- body.json
-- A second argument makes it a binary-extension request: the JSON header's length in bytes
-- (sent as Inference-Header-Content-Length), the raw tensor bytes following it in the file.
--   wrk ... -- body.bin 123
-- A body file named `-` makes it a GET without a body (the HTTP floor: a health endpoint).
--   wrk ... http://127.0.0.1:PORT/v2/health/ready -- -

function init(args)
  if args[1] == "-" then
    wrk.method = "GET"
    return
  end
  local file = assert(io.open(args[1], "rb"), "cannot open the request body file")
  wrk.body = file:read("*a")
  file:close()
  wrk.method = "POST"
  if args[2] then
    wrk.headers["Content-Type"] = "application/octet-stream"
    wrk.headers["Inference-Header-Content-Length"] = args[2]
  else
    wrk.headers["Content-Type"] = "application/json"
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
