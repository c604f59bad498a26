-- Regressions found by the reliability work (issue 6): each case once crashed the process,
-- leaked a header onto the wire or mis-handled input. A plain TCP listener (luasocket) plays the
-- server where the bytes on the wire matter.
local core = require("ibkr.core")
local ibkr = require("ibkr")
local socket = require("socket")
local mock = require("spec.helpers.mock")

-- Starts `method path` on session s (core) and returns the request head the server received.
local function head_on_wire(srv, s)
  local req = assert(s:start("GET", "/x"))
  srv:settimeout(0)
  local c
  local deadline = core.monotonic() + 5
  while not c and core.monotonic() < deadline do
    req:step()
    c = srv:accept()
    if not c then socket.select({ srv }, nil, 0.01) end
  end
  assert(c, "no connection")
  local lines = {}
  c:settimeout(0)
  while core.monotonic() < deadline do
    req:step()
    local line, err = c:receive("*l")
    if line == "" then break end
    if line then
      lines[#lines + 1] = line
    elseif err ~= "timeout" then
      break
    else
      socket.select({ c }, nil, 0.01)
    end
  end
  c:close()
  req:close()
  return lines
end

describe("hardening regressions", function()
  it("core.new ignores extra arguments instead of crashing (lua_next on a non-table)", function()
    -- headers present and a second argument: core.new walked the headers at stack index 2,
    -- which then held the extra argument, and segfaulted
    local s = core.new({ base_url = "http://127.0.0.1:9", headers = { ["X-A"] = "b" } }, "extra")
    assert.is_false(s:closed())
    s:close()
    local s2 = core.new({ base_url = "http://127.0.0.1:9", headers = { ["X-A"] = "b" } }, { "t" }, 1)
    s2:close()
  end)

  it("refuses a user_agent with CR, LF or NUL (header injection), in core.new and ibkr.new", function()
    for _, ua in ipairs{ "x\r\nX-Injected: 1", "x\nX-Injected: 1", "x\rY", "x\0y" } do
      assert.has_error(function() core.new{ base_url = "http://127.0.0.1:9", user_agent = ua } end)
      assert.has_error(function() ibkr.new{ base_url = "http://127.0.0.1:9", user_agent = ua } end)
    end
  end)

  it("sends a clean user_agent as the only User-Agent line", function()
    local srv = assert(socket.bind("127.0.0.1", 0))
    local _, port = srv:getsockname()
    local s = core.new{ base_url = "http://127.0.0.1:" .. port .. "/v1/api", user_agent = "probe/1" }
    local lines = head_on_wire(srv, s)
    srv:close()
    s:close()
    local ua = {}
    for _, l in ipairs(lines) do
      if l:lower():match("^user%-agent:") then ua[#ua + 1] = l end
    end
    assert.are.same({ "User-Agent: probe/1" }, ua)
    for _, l in ipairs(lines) do assert.is_nil(l:lower():match("^x%-injected")) end
  end)

  describe("against the mock", function()
    local m
    setup(function() m = assert(mock.start{ tls = false, pacing = false }) end)
    teardown(function() if m then m:stop() end end)

    it("req:wait(math.huge) and req:wait(1e300) wait until the request is done", function()
      -- (time_t) of inf/1e300 is undefined (float-cast-overflow); on x86 it gave a deadline in the
      -- past, so wait() returned false at once
      local s = core.new{ base_url = m.url }
      for _, t in ipairs{ math.huge, 1e300 } do
        m:fault{ path = "/tickle", kind = "delay", seconds = 0.2 }
        local req = assert(s:start("POST", "/tickle"))
        assert.is_true(req:wait(t))
        assert.is_true(req:step())
        assert(req:result())
        req:close()
      end
      s:close()
    end)

    it("huge timeouts are accepted and work (no float-cast overflow into curl's long)", function()
      -- (long)ceil(1e300 * 1000) is undefined behaviour; UBSan (make asan) reports it
      local s = core.new{ base_url = m.url, timeout = 1e300, connect_timeout = 1e300 }
      assert(s:perform("POST", "/tickle"))
      s:close()
      local u = ibkr.new{ base_url = m.url, timeout = 1e300, pacing = false }
      assert(u:tickle())
      u:close()
    end)

    it("a request with a body is sent once when its reused connection drops before the answer", function()
      -- libcurl re-sends a request whose reused connection died before any response byte; for a
      -- POST with a body (an order) that sends it twice, which the contract forbids (no retry of
      -- non-GET/HEAD requests without retry = true)
      local s = core.new{ base_url = m.url }
      assert(s:perform("POST", "/tickle"))               -- the connection is now pooled
      m:clear_log()
      m:fault{ path = "/iserver/account/U1/orders", kind = "drop", when = "before" }
      local r, err = s:perform("POST", "/iserver/account/U1/orders", { body = { orders = {} } })
      local sent = 0
      for _, e in ipairs(m:log()) do
        if e.path == "/v1/api/iserver/account/U1/orders" then sent = sent + 1 end
      end
      s:close()
      assert.is_nil(r)
      assert.are.equal("protocol", err.kind)
      assert.are.equal(1, sent)
    end)
  end)
end)
