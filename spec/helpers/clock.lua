-- A fake clock for sessions and keep-alives: `clock` reads it, `sleep` only moves it forward
-- (and records what it was asked to sleep), so time-based logic is tested without sleeping.
local M = {}

function M.new(start)
  local c = { t = start or 1000, slept = {} }
  c.clock = function() return c.t end
  c.sleep = function(s) c.slept[#c.slept + 1] = s; c.t = c.t + s end
  return c
end

return M
