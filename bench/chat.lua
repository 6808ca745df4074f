-- wrk script: POSTs one chat completion request per call with the tenant key.
-- Environment: BENCH_KEY (bearer key, optional), BENCH_MODEL (default bench-model),
-- BENCH_STREAM=1 for a streamed request.
-- done() prints one line "BENCH_RESULT {json}" that bench/run.py parses (latencies in microseconds).
local key = os.getenv("BENCH_KEY") or ""
local model = os.getenv("BENCH_MODEL") or "bench-model"
local stream = os.getenv("BENCH_STREAM") == "1"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
local body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say twenty words, please."}],'
  .. '"max_tokens":64,"temperature":0.7'
if stream then
  body = body .. ',"stream":true,"stream_options":{"include_usage":true}'
end
wrk.body = body .. '}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
