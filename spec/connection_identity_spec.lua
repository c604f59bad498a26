-- A response goes to the request it answers, across hosts too. Before a request goes out on a
-- kept connection the module looks for unread input on that connection's socket (stale bytes no
-- request asked for); it must find the right socket. Two connections from one local port to the
-- same port of two hosts (127.0.0.1 and 127.0.0.2; a process talking to two gateways on :443)
-- differ only in their addresses: found by ports alone, the check read the other socket and a
-- stale answer went to the next request as its own. spec/c/same_local_port.c (LD_PRELOAD) makes
-- both connections come from one local port, which the kernel otherwise does only by chance.
local raw = require("spec.helpers.raw")

local q = raw.q

-- Listens on one port at 127.0.0.1 (server "A") and 127.0.0.2 ("B"), and on a control port;
-- prints both ports. Answers every request on a connection with {"server":..,"n":<count on the
-- connection>}, and prints "peer NAME PORT" for each connection. On the control connection,
-- "stale NAME" sends an unsolicited answer {"stale":true} on NAME's latest connection, then "ok";
-- "quit" ends it.
local SERVER = [==[
local socket = require("socket")
local a = assert(socket.bind("127.0.0.1", 0))
local _, port = a:getsockname()
local b = assert(socket.bind("127.0.0.2", port))
local ctl = assert(socket.bind("127.0.0.1", 0))
print(port .. " " .. select(2, ctl:getsockname())); io.stdout:flush()
local name = { [a] = "A", [b] = "B" }
local conns, count, latest = {}, {}, {}
local function answer(c, body)
  c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " .. #body
    .. "\r\n\r\n" .. body)
end
local limit = socket.gettime() + 30
while socket.gettime() < limit do
  local list = { a, b, ctl }
  for c in pairs(conns) do list[#list + 1] = c end
  for _, s in ipairs(socket.select(list, nil, 1)) do
    if s == ctl or name[s] then
      local c = s:accept()
      conns[c], count[c] = name[s] or "control", 0
      if name[s] then latest[name[s]] = c end
      print("peer " .. conns[c] .. " " .. select(2, c:getpeername())); io.stdout:flush()
    else
      local line = s:receive("*l")
      if not line then conns[s] = nil; s:close()
      elseif conns[s] == "control" then
        if line == "quit" then os.exit(0) end
        answer(assert(latest[line:match("^stale (%a)$")]), '{"stale":true}')
        s:send("ok\n")
      elseif line == "" then
        count[s] = count[s] + 1
        answer(s, ('{"server":"%s","n":%d}'):format(conns[s], count[s]))
      end
    end
  end
end
]==]

-- Runs in a process with the shim preloaded: sessions for B, then A (so that B's socket is
-- registered first), one call each; then the server sends a stale answer on one connection
-- (`stale_on`), and the session of that connection makes a second call. `how` is "perform" or
-- "start"; `server` is SERVER's source. Prints what each call got.
local DRIVER = raw.PRELUDE .. [[
local core = require("ibkr.core")
local socket = require("socket")
local srv = assert(io.popen("env -u LD_PRELOAD -u IBKR_SPEC_SAME_LOCAL_PORT lua5.4 -e '"
  .. server:gsub("'", "'\\''") .. "'", "r"))
local port, ctl_port = srv:read("l"):match("^(%d+) (%d+)$")
local sessions = { B = core.new{ base_url = "http://127.0.0.2:" .. port },
                   A = core.new{ base_url = "http://127.0.0.1:" .. port } }
local function call(s)
  local r, err
  if how == "perform" then
    r, err = s:perform("GET", "/x")
  else
    local req = assert(s:start("GET", "/x"))
    assert(req:wait(10), "no answer")
    r, err = req:result()
  end
  return r and ("%s n=%s stale=%s"):format(r.server, r.n, r.stale) or tostring(err)
end
for _, name in ipairs{ "B", "A" } do
  print("first " .. name .. " " .. call(sessions[name]))
  print(srv:read("l"))
end
local ctl = assert(socket.connect("127.0.0.1", tonumber(ctl_port)))
ctl:settimeout(10)
assert(ctl:send("stale " .. stale_on .. "\n"))
assert(ctl:receive("*l") == "ok", "the server did not send the stale answer")
print("second " .. stale_on .. " " .. call(sessions[stale_on]))
ctl:send("quit\n")
for _, s in pairs(sessions) do s:close() end
srv:close()
]]

describe("a stale answer on a kept connection", function()
  local shim
  setup(function()
    shim = os.tmpname()
    local p = io.popen("env -u LD_PRELOAD cc -shared -fPIC -Wall -Wextra -Werror -o " .. q(shim)
      .. " spec/c/same_local_port.c -ldl 2>&1")
    local out = p:read("a")
    assert(p:close(), out)
  end)
  teardown(function() os.remove(shim) end)

  for _, how in ipairs{ "perform", "start" } do
    for _, stale_on in ipairs{ "A", "B" } do
      it("never goes to the next request (" .. how .. ", two hosts, one local port, stale on "
        .. stale_on .. ")", function()
        local driver = ("local stale_on, how, server = %q, %q, %q\n"):format(stale_on, how, SERVER) .. DRIVER
        local p = io.popen("env LD_PRELOAD=" .. q(shim) .. " IBKR_SPEC_SAME_LOCAL_PORT=1 lua5.4 -e "
          .. q(driver) .. " 2>&1")
        local out = p:read("a")
        assert(p:close(), out)
        assert.matches("first B B n=1", out)
        assert.matches("first A A n=1", out)
        -- the collision the spec is about: both connections from one local port
        local port_b, port_a = out:match("\npeer B (%d+)\n"), out:match("\npeer A (%d+)\n")
        assert.is_truthy(port_b, out)
        assert.are.equal(port_b, port_a, out)
        -- the stale answer was dropped with its connection; the call got a real answer
        local second = assert(out:match("second " .. stale_on .. " ([^\n]*)"), out)
        assert.are.equal(stale_on .. " n=1 stale=nil", second, out)
      end)
    end
  end
end)
