-- Sends every request with an X-API-Key: "hot" when API_KEYS=1, else one
-- of API_KEYS keys drawn uniformly (a fixed seed, so runs repeat).
local keys = tonumber(os.getenv("API_KEYS") or "1")
math.randomseed(1)

request = function()
    local key = "hot"
    if keys > 1 then
        key = "k" .. math.random(keys)
    end
    return wrk.format("GET", nil, { ["X-API-Key"] = key })
end
