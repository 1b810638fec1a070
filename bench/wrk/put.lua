-- PUTs of unique keys with a VALUE_BYTES body (default 4096): fills a log.
local counter = 0
local body = string.rep("v", tonumber(os.getenv("VALUE_BYTES") or "4096"))
local thread_id = 0

setup = function(thread)
    thread:set("thread_id", thread_id)
    thread_id = thread_id + 1
end

request = function()
    counter = counter + 1
    return wrk.format("PUT", "/v1/kv/t" .. thread_id .. "-" .. counter, nil, body)
end
