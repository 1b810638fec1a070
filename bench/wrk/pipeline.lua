-- Sends PIPELINE_DEPTH (default 16) requests for the same path per write.
-- wrk counts every response, so requests/s is per request, not per batch.
local depth = tonumber(os.getenv("PIPELINE_DEPTH") or "16")
init = function(args)
  local batch = {}
  for i = 1, depth do
    batch[i] = wrk.format(nil, wrk.path)
  end
  request_batch = table.concat(batch)
end
request = function()
  return request_batch
end
