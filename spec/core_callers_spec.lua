-- ibkr.core against what its callers can do: arguments it must refuse or survive (extra
-- arguments, header injection through user_agent, a NUL in the method, a body on GET or HEAD,
-- unknown options, infinite and huge timeouts), user code run during a call (metamethods and
-- finalisers that close the session or empty its tables), and an allocation failing anywhere in
-- a call (spec/c/oom.c). A plain TCP listener (luasocket) plays the server where the bytes on the
-- wire matter.
local core = require("ibkr.core")
local ibkr = require("ibkr")
local socket = require("socket")
local raw = require("spec.helpers.raw")
local mock = require("spec.helpers.mock")

-- Starts `method path` on session s (core) and returns the request head the server received.
local function head_on_wire(srv, s)
  local req = assert(s:start("GET", "/x"))
  local deadline = core.monotonic() + 5
  local c = raw.accept(srv, req, deadline)
  local lines = {}
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

describe("ibkr.core refuses or survives what its callers pass", function()
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
  end)
end)

describe("ibkr.core against the mock: what callers ask and what their code does mid-call", function()
  local m
  setup(function() m = assert(mock.start{ tls = false, pacing = false }) end)
  teardown(function() if m then m:stop() end end)

  describe("what goes on the wire is what the caller asked", function()
    it("refuses a method with a NUL byte (measured by its Lua length)", function()
      local s = core.new{ base_url = m.url }
      assert.has_error(function() s:perform("GET\0JUNK", "/tickle") end)
      assert.has_error(function() s:start("POST\0", "/tickle") end)
      s:close()
    end)

    it("refuses a GET or HEAD with a body, and sends nothing", function()
      local s = core.new{ base_url = m.url }
      local u = ibkr.new{ base_url = m.url, pacing = false }
      m:clear_log()
      for _, method in ipairs{ "GET", "HEAD" } do
        assert.has_error(function() s:perform(method, "/sso/validate", { body = "{}" }) end,
          nil) -- any message
        local ok, msg = pcall(s.start, s, method, "/sso/validate", { body = { a = 1 } })
        assert.is_false(ok)
        assert.matches("cannot carry a body", msg)
        assert.has_error(function() u:request(method, "/sso/validate", { body = { a = 1 } }) end)
      end
      assert.are.equal(0, #m:log())
      s:close()
      u:close()
    end)

    it("accepts headers = {} in start(), and a cooperative request with it", function()
      local s = core.new{ base_url = m.url }
      local req = s:start("POST", "/tickle", { headers = {} })
      assert.are.equal("ibkr.request", getmetatable(req).__name)
      assert.is_true(req:wait(5))
      assert(req:result())
      s:close()
      local u = ibkr.new{ base_url = m.url, cooperative = true, pacing = false }
      local co = coroutine.wrap(function() return u:request("GET", "/sso/validate", { headers = {} }) end)
      local res
      repeat res = co() until type(res) == "table"
      assert.is_true(res.RESULT)
      u:close()
    end)

    it("refuses unknown per-call options and a bad per-call timeout", function()
      local s = core.new{ base_url = m.url }
      assert.has_error(function() s:perform("POST", "/tickle", { bdy = "{}" }) end)
      assert.has_error(function() s:perform("POST", "/tickle", { timeout = 0 }) end)
      assert.has_error(function() s:perform("POST", "/tickle", { timeout = "1" }) end)
      s:close()
    end)
  end)

  describe("user code during a call never frees what the call uses", function()
    for _, how in ipairs{ "perform", "start" } do
      local function call(s, ...)
        if how == "perform" then return s:perform(...) end
        local req, err = s:start(...)
        if not req then return nil, err end
        assert(req:wait(5))
        return req:result()
      end

      it("a query value whose __len closes the session makes " .. how .. " return closed", function()
        local s = core.new{ base_url = m.url }
        local v = setmetatable({}, { __len = function() s:close(); return 1 end,
          __index = function() return "x" end })
        local r, err = call(s, "GET", "/iserver/auth/status", { query = { k = v } })
        assert.is_nil(r)
        assert.are.equal("closed", err.kind)
      end)

      it("an options table whose __index closes the session makes " .. how .. " return closed", function()
        local s = core.new{ base_url = m.url }
        local opts = setmetatable({}, { __index = function() s:close() end })
        local r, err = call(s, "POST", "/tickle", opts)
        assert.is_nil(r)
        assert.are.equal("closed", err.kind)
        assert.is_true(s:closed())
      end)

      it("a finaliser closing the session while a large answer is decoded (" .. how .. ")", function()
        local s = core.new{ base_url = m.url, max_body = 64 * 1024 * 1024 }
        m:fault{ path = "/tickle", kind = "huge", bytes = 5 * 1024 * 1024 }
        local fired = false
        local pause = collectgarbage("setpause", 10)
        setmetatable({}, { __gc = function() fired = true; s:close() end })
        local r, err = call(s, "POST", "/tickle")
        collectgarbage("setpause", pause)
        collectgarbage()
        assert.is_true(fired)
        if r then -- the finaliser ran after the call ended
          assert.are.equal(5 * 1024 * 1024 - 11, #r.data)
        else
          assert.are.equal("closed", err.kind)
        end
        assert.is_true(s:closed())
      end)
    end

    it("a finaliser making a blocking call of the same session while a large answer is decoded: both "
        .. "answers are right, and the session's own exchange is free again after", function()
      local s = core.new{ base_url = m.url, max_body = 64 * 1024 * 1024 }
      m:fault{ path = "/tickle", kind = "huge", bytes = 5 * 1024 * 1024 }
      local inner, inner_err, during
      local pause = collectgarbage("setpause", 10)
      setmetatable({}, { __gc = function()
        during = s:busy() -- the outer call's exchange is still open: this call gets a request of its own
        inner, inner_err = s:perform("POST", "/iserver/auth/status", { repeatable = true })
      end })
      local r, err = s:perform("POST", "/tickle")
      collectgarbage("setpause", pause)
      collectgarbage()
      assert(r, tostring(err))
      assert.are.equal(5 * 1024 * 1024 - 11, #r.data)
      assert(inner, tostring(inner_err))
      assert.is_true(inner.authenticated)
      assert.is_true(during)
      local again = assert(s:perform("POST", "/iserver/auth/status", { repeatable = true }))
      assert.is_true(again.authenticated)
      assert.are.equal(0, s:info().in_flight)
      s:close()
    end)

    it("a query value whose __index changes the query table frees nothing in use", function()
      local s = core.new{ base_url = m.url }
      local qt = {}
      qt.a = setmetatable({}, { __len = function() for k in pairs(qt) do qt[k] = nil end
        collectgarbage(); return 2 end, __index = function(_, i) return "v" .. i end })
      qt[string.rep("k", 40) .. "1"] = "x"
      qt[string.rep("k", 40) .. "2"] = "y"
      -- the keys are the session's own copies: the second one is still read (its value is gone)
      assert.has_error(function() s:perform("POST", "/tickle", { query = qt }) end,
        "query values must be strings, numbers, booleans or arrays of them")
      assert(s:perform("POST", "/tickle"))
      s:close()
    end)
  end)

  describe("out of memory", function()
    it("an allocation failing anywhere in a call leaves the session working (spec/c/oom.c)", function()
      local ok, out = raw.c_program("spec/c/oom.c", m.url)
      assert(ok, out)
      local oom, answered, failures =
        out:match("oom: (%d+) calls out of memory, (%d+) answered, (%d+) failures")
      assert.is_true(tonumber(oom) > 10, out)
      assert.are.equal("2", answered)
      assert.are.equal("0", failures)
    end)
  end)
end)
