-- Raw TCP servers for specs where the bytes on the wire matter (luasocket on 127.0.0.1).
local core = require("ibkr.core")
local socket = require("socket")

local M = {}

-- Steps request `req` (ibkr.core's) until listener `srv` accepts its connection, failing the spec
-- at `deadline` (core.monotonic() seconds). Returns the connection, non-blocking (timeout 0).
function M.accept(srv, req, deadline)
  srv:settimeout(0)
  local c
  while not c do
    assert(core.monotonic() < deadline, "no connection")
    req:step()
    c = srv:accept()
    if not c then socket.select({ srv }, nil, 0.01) end
  end
  c:settimeout(0)
  return c
end

-- A server program (run it with `lua5.4 -e`): prints its port, then "connection" and ends at its
-- first connection, or "done" after 1 s without one.
M.COUNTING_SERVER = [[
local socket = require("socket")
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname(); print(port); io.stdout:flush()
srv:settimeout(1)
local c = srv:accept()
print(c and "connection" or "done")
]]

return M
