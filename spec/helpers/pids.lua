-- Processes by pid, for the specs that kill process groups: /proc/PID/stat's state, process group
-- and start time (the start time tells a process from a later one that was given the same pid).
local core = require("ibkr.core")

local M = {}

-- state ("R", "S", "Z"...), process group, start time (clock ticks since boot); nil when gone
function M.stat(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local line = f:read("l") or ""
  f:close()
  local st, rest = line:match("^%d+ %b() (%a) (.*)$")
  if not st then return nil end
  local fields = {}
  for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
  return st, tonumber(fields[2]), fields[19]
end

-- Whether pid is still the process that started at `started` (any, when nil) and not a zombie.
function M.alive(pid, started)
  local st, _, t = M.stat(pid)
  return st ~= nil and st ~= "Z" and (started == nil or t == started)
end

-- Waits until that process is gone (a process SIGKILL reached may take a moment to be torn down);
-- returns whether it went within `limit` seconds (10).
function M.gone(pid, started, limit)
  local stop = core.monotonic() + (limit or 10)
  while M.alive(pid, started) do
    if core.monotonic() > stop then return false end
    core.poll({}, 0.01)
  end
  return true
end

return M
