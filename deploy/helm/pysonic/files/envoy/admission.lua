-- Admission control for new SONIC clients (Envoy HTTP Lua filter, LuaJIT).
--
-- SONIC clients call RepositoryIndex when they connect (pysonic's balancer and CMSSW's
-- SonicTriton discover models that way). While the servers behind this Envoy are saturated,
-- i.e. the queue time per model execution reported by Prometheus is above the threshold, that
-- call is answered UNAVAILABLE at once, so a new client goes to another site or falls back to
-- local inference instead of deepening the queue. Clients already connected keep running:
-- only RepositoryIndex is gated, inference is never refused here (autoscaling adds servers).
--
-- The chart prepends the configuration: ADMISSION_QUERY_PATH (the URL-encoded
-- /api/v1/query?query=... path), ADMISSION_AUTHORITY, ADMISSION_THRESHOLD_MS,
-- ADMISSION_TIMEOUT_MS, ADMISSION_FAIL_OPEN.

local INDEX_PATH = "/inference.GRPCInferenceService/RepositoryIndex"

-- The first sample of an instant-vector answer:
-- {"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.7e9,"42.5"]}]}}
local function first_sample(body)
  local text = string.match(body, '"value":%[[^,%]]+,"([^"]*)"%]')
  if text == nil then
    return nil, "no sample in Prometheus' answer"
  end
  local value = tonumber(text)
  if value == nil or value ~= value then  -- NaN (or anything not a number)
    return nil, "Prometheus returned " .. text
  end
  return value
end

local function queue_latency_ms(handle)
  local headers, body = handle:httpCall(
    "prometheus",
    {
      [":method"] = "GET",
      [":path"] = ADMISSION_QUERY_PATH,
      [":authority"] = ADMISSION_AUTHORITY,
    },
    "",
    ADMISSION_TIMEOUT_MS
  )
  if headers == nil or headers[":status"] ~= "200" or body == nil then
    return nil, "Prometheus did not answer the queue-latency query"
  end
  return first_sample(body)
end

local function refuse(handle, message)
  -- a trailers-only gRPC answer: HTTP 200, grpc-status 14 (UNAVAILABLE, which clients retry
  -- elsewhere); Envoy never forwards the request
  handle:respond({
    [":status"] = "200",
    ["content-type"] = "application/grpc",
    ["grpc-status"] = "14",
    ["grpc-message"] = message,
  }, "")
end

function envoy_on_request(handle)
  if handle:headers():get(":path") ~= INDEX_PATH then
    return
  end
  local latency, err = queue_latency_ms(handle)
  if latency == nil then
    if ADMISSION_FAIL_OPEN then
      handle:logWarn("pysonic admission: " .. err .. "; admitting the client")
      return
    end
    refuse(handle, "pysonic admission: " .. err)
    return
  end
  if latency > ADMISSION_THRESHOLD_MS then
    refuse(handle, string.format(
      "pysonic servers saturated: queue time per execution %.1f ms above %.1f ms, retry later",
      latency, ADMISSION_THRESHOLD_MS))
  end
end

function envoy_on_response(handle)
end
