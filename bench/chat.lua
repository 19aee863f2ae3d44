-- wrk script: POST an OpenAI chat completion, report latency percentiles as one JSON line.
-- MODEL, PATH and BODY come from the environment (set by bench/run).
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
-- BENCH_AUTH, when set, is sent as a bearer key (a consumer key of a limited proxy).
if os.getenv("BENCH_AUTH") then
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_AUTH")
end
-- BENCH_BODY, when set, is sent as it is (a provider's native body for the direct runs).
wrk.body = os.getenv("BENCH_BODY") or string.format(
  '{"model":"%s","messages":[{"role":"user","content":"Say hello in one short sentence."}],"stream":%s}',
  os.getenv("BENCH_MODEL") or "bench-model", os.getenv("BENCH_STREAM") or "false")

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"non_2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
