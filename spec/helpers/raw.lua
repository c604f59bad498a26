-- Raw TCP servers for specs where the bytes on the wire matter (luasocket on 127.0.0.1), and the
-- child processes specs start: shell quoting, the checkout prelude, C programs, stopped processes.
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

-- Sends `response` on connection `c`, closes it and listener `srv`, then steps `req` until it is
-- done (failing the spec at `deadline`). Returns what req:result() returns; req is closed.
function M.finish(c, srv, req, response, deadline)
  c:settimeout(5)
  assert(c:send(response))
  c:close()
  srv:close()
  while not req:step() do
    assert(core.monotonic() < deadline, "no result")
    req:wait(0.05)
  end
  local r, err, status = req:result()
  req:close()
  return r, err, status
end

-- A server program (run it with `lua5.4 -e`): prints its port, then the first line its first
-- connection sends, and ends ("none" after 30 s without one). A spec that wants to know whether
-- anything came sends a line itself when it is done (poke): what the server prints tells which
-- connection came first.
M.FIRST_LINE_SERVER = [[
local socket = require("socket")
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname(); print(port); io.stdout:flush()
srv:settimeout(30)
local c = srv:accept()
if not c then print("none") os.exit(0) end
c:settimeout(10)
print(c:receive("*l") or "(nothing)")
c:close()
]]

-- Connects to port and sends the line `line` (for FIRST_LINE_SERVER).
function M.poke(port, line)
  local c = assert(socket.connect("127.0.0.1", port))
  c:send(line .. "\r\n")
  c:close()
end

-- Stops process `pid` (SIGSTOP) and returns once the kernel shows it stopped: whatever reaches
-- it from then on waits, for certain, until thaw(pid).
function M.freeze(pid)
  assert(os.execute("kill -STOP " .. pid))
  while true do
    local f = assert(io.open("/proc/" .. pid .. "/stat"))
    local state = f:read("l"):match("^%d+ %b() (%a)")
    f:close()
    if state == "T" then return end
    socket.sleep(0.001)
  end
end

function M.thaw(pid)
  assert(os.execute("kill -CONT " .. pid))
end

-- A port on 127.0.0.1 that nothing listens on now, outside the kernel's ephemeral range
-- (net.ipv4.ip_local_port_range, 32768-60999 by default): no server of a spec running next to
-- this one gets it by asking for any free port, so it stays free (a refused connection) until
-- this spec puts a server there, even one it stopped and starts again.
function M.spare_port()
  for _ = 1, 1000 do
    local port = math.random(20000, 32000)
    local l = socket.bind("127.0.0.1", port)
    if l then
      l:close()
      return port
    end
  end
  error("no spare port between 20000 and 32000")
end

-- s as one single-quoted shell word
function M.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local q = M.q

-- Builds the C program src (spec/c/NAME.c) against Lua 5.4 and runs it with the argument `arg`
-- (and `more`, a string of shell words); returns whether it succeeded and its output. (cc and
-- the program never run under a sanitizer preload: the program loads the normal module.)
function M.c_program(src, arg, more)
  local bin = os.tmpname()
  local flags = "$(pkg-config --cflags --libs lua5.4 2>/dev/null || echo -I/usr/include/lua5.4 -llua5.4)"
  local p = io.popen("env -u LD_PRELOAD cc -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -o "
    .. q(bin) .. " " .. src .. " " .. flags .. " 2>&1")
  local out = p:read("a")
  if not p:close() then
    os.remove(bin)
    return false, out
  end
  p = io.popen("env -u LD_PRELOAD " .. q(bin) .. " " .. q(arg) .. " " .. (more or "") .. " 2>&1")
  out = p:read("a")
  local ok = p:close()
  os.remove(bin)
  return ok, out
end

-- Lua source that makes a child `lua5.4 -e` (started from the checkout's root) load this checkout
M.PRELUDE = "package.path='lua/?.lua;lua/?/init.lua;'..package.path;"
  .. " package.cpath='./?.so;'..package.cpath;"

-- Starts `script` (Lua source) as a server process (`env`: more shell words before lua5.4; never
-- under a sanitizer preload); returns the pipe of its output and the port it printed first.
function M.server(script, env)
  local p = assert(io.popen("env -u LD_PRELOAD " .. (env or "") .. " lua5.4 -e " .. q(script), "r"))
  return p, assert(tonumber(p:read("l")), "the server did not start")
end

-- Lua source for server scripts: read_request(c) reads one request (head and Content-Length body)
-- from connection c; returns its method and path, or nil.
M.READ_REQUEST = [[
local function read_request(c)
  c:settimeout(5)
  local line = c:receive("*l")
  if not line then return nil end
  local len = 0
  while true do
    local h = c:receive("*l")
    if not h or h == "" then break end
    len = tonumber(h:lower():match("^content%-length:%s*(%d+)")) or len
  end
  if len > 0 then c:receive(len) end
  return line:match("^(%S+) (%S+)")
end
]]

return M
