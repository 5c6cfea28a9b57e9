-- wrk script: synchronous events against many entities (POST /api/events/sync), each running a 3-rule ruleset.
--
--   benches/orchestration.sh sets up the workflow and the entities, then runs:
--   ORDO_API_KEY=<key> ORDO_ENTITIES=1000 wrk -t2 -c32 -d20s --latency -s benches/http_event_sync.lua http://127.0.0.1:8080
--
-- ORDO_EVENT_PATH=/api/events sends them asynchronously instead (to fill the queue for the async figures).
-- ORDO_DELAY_MS=40 paces each connection: it waits that long after each answer before its next request (clients
-- with think time instead of a closed loop); wrk's latencies do not include the wait.

local key = os.getenv("ORDO_API_KEY") or error("set ORDO_API_KEY")
local entities = tonumber(os.getenv("ORDO_ENTITIES") or "1000")
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key }
local path = os.getenv("ORDO_EVENT_PATH") or "/api/events/sync?timeout_ms=10000"
local n = 0
local pause = tonumber(os.getenv("ORDO_DELAY_MS") or "0")

if pause > 0 then
  function delay()
    return pause
  end
end

function request()
  n = n + 1
  local ref = "b-" .. ((n * 7919) % entities)
  local body = '{"name":"Touch","entity":{"type":"BENCH","ref":"' .. ref .. '"},"attributes":{"n":' .. n .. '}}'
  return wrk.format("POST", path, headers, body)
end
