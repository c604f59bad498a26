-- Processes by pid, from /proc (Linux): what the mock needs to follow its parent and what the
-- test helper needs to follow the mock.
local proc = {}

-- The one-letter state of process `pid` ("R", "S", "Z", ...), or nil when there is none.
function proc.state(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then
    return nil
  end
  local line = f:read("l") or ""
  f:close()
  return line:match("^%d+ %b() (%a)")
end

-- Whether process `pid` exists and is not a zombie.
function proc.alive(pid)
  local st = proc.state(pid)
  return st ~= nil and st ~= "Z"
end

return proc
