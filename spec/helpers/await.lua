-- Waiting for an event the mock gateway records (its request log), never by sleeping blind:
--   local await = require("spec.helpers.await")
--   await.requests(m, "/tickle", 1)   -- until mock m logged one /tickle (fails after 10 s)
local core = require("ibkr.core")

local M = {}

local SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1

function M.requests(m, api, n)
  local give_up = core.monotonic() + 10 * SCALE
  while #m:api_log(api) < n do
    assert(core.monotonic() < give_up, "the mock never saw " .. api)
    core.sleep(0.02)
  end
end

return M
