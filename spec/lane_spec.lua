-- The warm lane: a non-blocking exchange of a session that holds a kept connection runs
-- on the caller's thread, stepped through its socket; one that needs a connection is connected by
-- the engine thread. These specs hold it to what a cooperative call promises: the answer wakes
-- the pollable, a kept connection the gateway dropped is replaced without losing or doubling the
-- request, a gateway that is not there fails at once, and closing mid-exchange frees everything.
local core = require("ibkr.core")
local ibkr = require("ibkr")
local mock = require("spec.helpers.mock")
local raw = require("spec.helpers.raw")

local SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1
local REPEATABLE = { repeatable = true }

-- steps req until it ends, sleeping on its pollable between steps (as ibkr.run does)
local function finish(req)
  local limit = core.monotonic() + 10 * SCALE
  while not req:step() do
    assert(core.monotonic() < limit, "the request never ended")
    local fd = req:pollfd()
    if fd >= 0 then core.poll({ fd }, req:timeout(), { req:events() }) else core.sleep(req:timeout()) end
  end
  return req:result()
end

-- whether descriptor fd of this process is open
local PID = assert(io.open("/proc/self/stat")):read("n")
local function is_open(fd)
  return os.execute(string.format("test -L /proc/%d/fd/%d", PID, fd)) == true
end

-- Answers one request per connection with {"n":<count>} and closes the connection without saying
-- so (no "Connection: close"): every kept connection the client holds is gone when it reuses it.
-- Prints "METHOD PATH" for each request it reads; GET /quit ends it.
local CLOSING_SERVER = raw.READ_REQUEST .. [[
local socket = require("socket")
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname(); print(port); io.stdout:flush()
srv:settimeout(20)
local n = 0
while true do
  local c = srv:accept()
  if not c then os.exit(1) end
  local method, path = read_request(c)
  if method then
    print(method .. " " .. path); io.stdout:flush()
    n = n + 1
    local body = '{"n":' .. n .. '}'
    c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " .. #body
      .. "\r\n\r\n" .. body)
  end
  c:close()
  if path == "/quit" then os.exit(0) end
end
]]

-- A session of mock m whose lane keeps a connection, and a /tickle started in that lane whose
-- answer the mock holds back until m:release(): returns the session and the request, stepped
-- until the mock has it (an exchange in the lane moves only when stepped).
local function slow_in_lane(m)
  local s = core.new{ base_url = m.url }
  assert(finish(assert(s:start("POST", "/tickle", REPEATABLE))))
  m:fault{ path = "/tickle", kind = "hold" }
  local req = assert(s:start("POST", "/tickle", REPEATABLE))
  local limit = core.monotonic() + 10 * SCALE
  while #m:held() == 0 do
    assert(core.monotonic() < limit, "the mock never got the request")
    assert.is_false(req:step())
    core.sleep(0.001)
  end
  return s, req
end

for _, tls in ipairs{ false, true } do
  describe("the warm lane over " .. (tls and "HTTPS" or "HTTP"), function()
    local m
    setup(function() m = assert(mock.start{ tls = tls, pacing = false }) end)
    teardown(function() if m then m:stop() end end)
    before_each(function() m:reset() end)

    it("runs one connection for a series of cooperative calls, each woken by its pollable", function()
      local s = core.new{ base_url = m.url }
      for _ = 1, 20 do
        local res = assert(finish(assert(s:start("POST", "/iserver/auth/status", REPEATABLE))))
        assert.is_true(res.authenticated)
      end
      local info = s:info()
      assert.are.equal(1, info.connects)
      assert.are.equal(19, info.lane_exchanges)   -- all but the first (which connected) ran here
      s:close()
    end)

    it("blocking and cooperative calls of a session share its one kept connection", function()
      local s = core.new{ base_url = m.url }
      for _ = 1, 3 do
        assert(s:perform("POST", "/tickle", REPEATABLE))
        assert(finish(assert(s:start("POST", "/iserver/auth/status", REPEATABLE))))
      end
      local info = s:info()
      assert.are.equal(1, info.connects)
      assert.are.equal(6, info.lane_exchanges)
      s:close()
    end)

    it("a slow exchange in the lane does not hold up the next one", function()
      local s, slow = slow_in_lane(m)
      local quick = assert(s:start("POST", "/iserver/auth/status", REPEATABLE))
      assert.is_true(assert(finish(quick)).authenticated)
      assert.is_false(slow:done())
      m:release()
      assert(finish(slow))
      s:close()
    end)

    it("closing the request mid-exchange frees it; the next call connects again", function()
      local s, req = slow_in_lane(m)
      assert.is_false(req:step())
      req:close()
      assert.are.equal("closed", select(2, req:result()).kind)
      assert.are.equal(0, s:info().in_flight)
      local again = assert(s:start("POST", "/iserver/auth/status", REPEATABLE))
      assert.is_true(assert(finish(again)).authenticated)
      s:close()
    end)

    it("closing the session mid-exchange makes the call report closed", function()
      local s, req = slow_in_lane(m)
      assert.is_false(req:step())
      s:close()
      assert.is_true(req:step())
      assert.are.equal("closed", select(2, req:result()).kind)
      assert.are.equal(-1, req:pollfd())
    end)

    it("a session closed while a waiter watches the descriptor wakes it; the descriptor stays the request's",
      function()
        local s, req = slow_in_lane(m)
        local fd = req:pollfd()
        assert.is_true(fd >= 0)
        assert.is_true(is_open(fd))
        s:close()                                           -- from elsewhere, while it is watched
        assert.are.same({ 1 }, { core.poll({ fd }, 1) })    -- woken at once, not by the answer
        assert.is_true(is_open(fd))                         -- not closed under the waiter
        assert.is_true(req:step())
        assert.are.equal("closed", select(2, req:result()).kind)
        req:close()
        assert.is_false(is_open(fd))
      end)

    it("an exchange collected by the garbage collector mid-flight leaves the session usable", function()
      local s
      do
        local req
        s, req = slow_in_lane(m)
        req:step()
      end
      collectgarbage()
      collectgarbage()
      local again = assert(s:start("POST", "/iserver/auth/status", REPEATABLE))
      assert.is_true(assert(finish(again)).authenticated)
      s:close()
    end)

    it("cooperative calls through ibkr.run on one session, then a gateway drop in the middle", function()
      local s = ibkr.new{ base_url = m.url, cooperative = true, pacing = false }
      local got = {}
      local co = coroutine.create(function()
        for i = 1, 10 do
          if i == 5 then m:fault{ path = "/iserver/auth/status", kind = "drop" } end
          got[#got + 1] = assert(s:auth_status()).authenticated
        end
      end)
      assert.is_true(ibkr.run(co, { duration = 20 * SCALE }))
      assert.are.equal(10, #got)
      s:close()
    end)
  end)
end

describe("the warm lane against raw servers", function()
  it("replaces a kept connection the server closed: every call answered, each request sent once", function()
    local p, port = raw.server(CLOSING_SERVER)
    local s = core.new{ base_url = "http://127.0.0.1:" .. port }
    for i = 1, 6 do
      local res = assert(finish(assert(s:start("GET", "/n" .. i))))
      assert.are.equal(i, res.n)        -- a lost or doubled request would shift the count
    end
    assert.are.equal(0, s:info().lane_exchanges)   -- each found its kept connection gone
    s:close()
    local q = core.new{ base_url = "http://127.0.0.1:" .. port }
    q:perform("GET", "/quit")
    q:close()
    local out = p:read("a")
    p:close()
    for i = 1, 6 do
      local n = 0
      for _ in out:gmatch("GET /n" .. i .. "\n") do n = n + 1 end
      assert.are.equal(1, n, "GET /n" .. i)
    end
  end)

  it("fails a cooperative call to a port nobody listens on as 'connect', at once", function()
    local port = require("spec.helpers.raw").spare_port() -- nobody listens there
    local s = core.new{ base_url = "http://127.0.0.1:" .. port, timeout = 60 }
    local req = assert(s:start("GET", "/x"))
    assert.is_true(req:wait(10), "a refused connection waited for the 60 s timeout")
    local r, err = req:result()
    assert.is_nil(r)
    assert.are.equal("connect", err.kind)
    s:close()
  end)
end)

-- Answers /warm at once on a new connection (kept). Holds a later request on that connection
-- 1.5 s, then closes it unanswered; answers the request again 1.5 s after it arrives on a new one.
local LATE_SERVER = raw.READ_REQUEST .. [[
local socket = require("socket")
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname(); print(port); io.stdout:flush()
srv:settimeout(20)
local function answer(c)
  c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
end
local a = assert(srv:accept())
assert(read_request(a)); answer(a)
assert(read_request(a)); socket.sleep(1.5); a:close()
local b = assert(srv:accept())
assert(read_request(b)); socket.sleep(1.5); answer(b); b:close()
print("done"); io.stdout:flush()
]]

describe("a session that verifies certificates", function()
  it("runs its non-blocking exchanges on the engine, not in the lane", function()
    -- closing a verified TLS connection frees its CA store (1-2 ms with the system bundle): never
    -- on the caller's thread
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir .. " && openssl req -x509 -newkey ec -pkeyopt "
      .. "ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost -addext "
      .. "subjectAltName=IP:127.0.0.1 -keyout " .. dir .. "/key.pem -out " .. dir .. "/cert.pem 2>/dev/null"))
    local m = assert(mock.start{ pacing = false,
      args = { "--cert", dir .. "/cert.pem", "--key", dir .. "/key.pem" } })
    local s = core.new{ base_url = m.url, ca_file = dir .. "/cert.pem" }
    for _ = 1, 5 do
      local req = assert(s:start("POST", "/iserver/auth/status", REPEATABLE))
      assert.is_true(assert(finish(req)).authenticated)
    end
    local info = s:info()
    assert.are.equal(5, info.exchanges)
    assert.are.equal(0, info.lane_exchanges)
    s:close()
    m:stop()
    os.execute("rm -rf " .. dir)
  end)
end)

describe("the warm lane keeps each exchange's deadline", function()
  it("an exchange that starts over on a new connection gets only the time it has left", function()
    local p, port = raw.server(LATE_SERVER)
    local s = core.new{ base_url = "http://127.0.0.1:" .. port, timeout = 2 }
    assert(finish(assert(s:start("GET", "/warm"))))
    local r, err = finish(assert(s:start("GET", "/slow")))
    assert.is_nil(r, "answered after the exchange's 2 s timeout")
    assert.are.equal("timeout", err.kind)
    s:close()
    assert.are.equal("done", p:read("l"))
    p:close()
  end)
end)

describe("core.poll events", function()
  it("waits for writability when asked, and refuses unknown events", function()
    local m = assert(mock.start{ tls = false, pacing = false })
    local s = core.new{ base_url = m.url }
    m:fault{ path = "/tickle", kind = "hold" }
    local req = assert(s:start("POST", "/tickle"))
    local fd = req:pollfd()
    assert.are.equal(0, select("#", core.poll({ fd }, 0, { "r" })))   -- not readable yet
    assert.are.same({ 1 }, { core.poll({ fd }, 0, { "w" }) })           -- a descriptor is writable
    assert.has_error(function() core.poll({ fd }, 0, { "x" }) end)
    assert.has_error(function() core.poll({ fd }, 0, { "" }) end)
    assert.is_true(m:await_held(1))
    m:release()
    assert(finish(req))
    s:close()
    m:stop()
  end)
end)
