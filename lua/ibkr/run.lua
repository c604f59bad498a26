-- ibkr.run: drives keep-alive coroutines (or any coroutine that yields "seconds until my next
-- resume") from a plain script, sleeping exactly until the earliest wake-up.

local core = require("ibkr.core")

local M = {}

-- When each coroutine wants its next resume, kept across run() calls so that driving again
-- later respects the schedule. Weak keys: a coroutine the user drops is not kept alive here.
local wake_at = setmetatable({}, { __mode = "k" })

-- run(co_or_list, {duration = s, clock = fn, sleep = fn}) -> true when all ended, false when the
-- duration passed first (those still alive stay alive and can be driven again).
-- A coroutine that raises makes run raise that error (a keep-alive never raises).
function M.run(cos, opts)
  local list = cos
  if type(cos) == "thread" then list = { cos } end
  if type(list) ~= "table" then error("ibkr.run: expects a coroutine or a list of coroutines", 2) end
  for i, co in ipairs(list) do
    if type(co) ~= "thread" then error("ibkr.run: element " .. i .. " is not a coroutine", 2) end
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("ibkr.run: options must be a table", 2) end
  local duration = opts.duration
  if duration ~= nil and (type(duration) ~= "number" or duration ~= duration or duration < 0) then
    error("ibkr.run: 'duration' must be a number >= 0", 2)
  end
  local clock, sleep = opts.clock or core.monotonic, opts.sleep or core.sleep
  local deadline = duration and clock() + duration

  while true do
    local earliest
    for _, co in ipairs(list) do
      if coroutine.status(co) == "suspended" then
        local due = wake_at[co]
        if not due or due <= clock() then
          local ok, wait = coroutine.resume(co)
          if not ok then error(wait, 0) end
          if coroutine.status(co) == "dead" then
            wake_at[co] = nil
          else
            if type(wait) ~= "number" or wait ~= wait or wait < 0 then wait = 0 end
            due = clock() + wait
            wake_at[co] = due
          end
        end
        if coroutine.status(co) == "suspended" and (not earliest or due < earliest) then earliest = due end
      end
    end
    if not earliest then return true end
    local now = clock()
    if deadline and earliest >= deadline then
      if deadline > now then sleep(deadline - now) end
      return false
    end
    if earliest > now then sleep(earliest - now) end
  end
end

return M
