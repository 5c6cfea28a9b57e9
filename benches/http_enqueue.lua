-- wrk script: enqueue no-op jobs over HTTP, one per request or ORDO_BATCH per request.
--
--   ORDO_API_KEY=<key> wrk -t2 -c64 -d30s --latency -s benches/http_enqueue.lua http://127.0.0.1:8080
--   ORDO_API_KEY=<key> ORDO_BATCH=1000 wrk -t2 -c16 -d30s --latency -s benches/http_enqueue.lua http://127.0.0.1:8080
--
-- Run the API with ORDO_RATE_LIMIT_RPS=0 (or a limit above the offered load), or the limiter is what you measure.

local key = os.getenv("ORDO_API_KEY") or error("set ORDO_API_KEY")
local batch = tonumber(os.getenv("ORDO_BATCH") or "0")
local path, body

if batch > 0 then
  local jobs = {}
  for i = 1, batch do
    jobs[i] = '{"kind":"noop","args":{"i":' .. i .. '}}'
  end
  path = "/api/jobs/batch"
  body = '{"jobs":[' .. table.concat(jobs, ",") .. ']}'
else
  path = "/api/jobs"
  body = '{"kind":"noop","args":{}}'
end

local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key }
local req

function init(args)
  req = wrk.format("POST", path, headers, body)
end

function request()
  return req
end

local non2xx = 0

function response(status, headers, body)
  if status ~= 200 and status ~= 201 then
    non2xx = non2xx + 1
    if non2xx <= 3 then
      io.write("unexpected status " .. status .. ": " .. body .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local per_req = batch > 0 and batch or 1
  io.write(string.format(
    "requests/s %.0f  jobs/s %.0f  p50 %.2f ms  p99 %.2f ms  errors %d\n",
    summary.requests / secs,
    summary.requests * per_req / secs,
    latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  ))
end
