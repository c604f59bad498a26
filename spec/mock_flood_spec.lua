-- The mock gateway survives its clients (issue 9, kind 8): clients that send a request and vanish
-- without reading the answer (over TLS without close_notify, or with a reset), half-open and
-- never-finished connections, readers that stop reading. One client only ever costs its own
-- connection: the mock keeps answering others, never spins a core and still stops on SIGTERM.
local socket = require("socket")
local mock = require("spec.helpers.mock")

local TICKS = 100 -- clock ticks per second of /proc/PID/stat on Linux (getconf CLK_TCK)

-- CPU seconds (user + system) the process has used so far.
local function cpu_seconds(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat", "r"))
  local line = f:read("l")
  f:close()
  local rest = line:match("^%d+ %b() (.*)$")
  local fields = {}
  for w in rest:gmatch("%S+") do
    fields[#fields + 1] = w
  end
  -- fields[1] is the state (field 3 of stat); utime and stime are fields 14 and 15
  return (tonumber(fields[12]) + tonumber(fields[13])) / TICKS
end

local REQUEST = "POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"

-- Connects, completes the TLS handshake (if any) and sends a request. Returns the stream and the
-- TCP object under it (its descriptor moved to the TLS stream).
local function send_request(m)
  local tcp = socket.tcp()
  tcp:settimeout(5)
  assert(tcp:connect(m.host, m.port))
  local stream = tcp
  if m.tls then
    stream = assert(require("ssl").wrap(tcp, { mode = "client", protocol = "any", verify = "none" }))
    stream:settimeout(5)
    assert(stream:dohandshake())
  end
  assert(stream:send(REQUEST))
  return stream, tcp
end

-- Sends a request and goes away without reading the answer: "close" (a TLS close_notify, then
-- FIN), "cut" (FIN without close_notify: over TLS the mock reads "unexpected eof", the case that
-- made luasec loop in C) or "rst" (a reset).
local function abandon(m, how)
  local stream, tcp = send_request(m)
  if how == "close" then
    stream:close()
    return
  end
  if stream ~= tcp then
    tcp:setfd(stream:getfd()) -- take the descriptor back from the TLS layer
  end
  if how == "rst" then
    tcp:setoption("linger", { on = true, timeout = 0 })
    tcp:close()
  else
    tcp:shutdown("both")
  end
  if stream ~= tcp then
    tcp:setfd(socket._SOCKETINVALID)
    stream:close()
  end
end

-- A normal client's request must be answered, and quickly, whatever the others do.
local function answered(m)
  local t0 = socket.gettime()
  local r, err = m:request("POST", "/v1/api/iserver/auth/status", { timeout = 5 })
  assert(r, "no answer: " .. tostring(err))
  assert.equals(200, r.status)
  return socket.gettime() - t0
end

for _, tls in ipairs({ true, false }) do
  local scheme = tls and "https" or "http"

  describe("mock gateway under a flood of bad clients over " .. scheme, function()
    local m

    before_each(function()
      m = assert(mock.start({ tls = tls, pacing = false }))
    end)

    after_each(function()
      m:stop()
    end)

    it("answers others, and idles, after clients that send a request and vanish", function()
      for i = 1, 60 do
        abandon(m, ({ "cut", "rst", "close" })[i % 3 + 1])
        if i % 20 == 0 then
          answered(m)
        end
      end
      -- the same with answers too big to fit in the socket buffers
      m:fault({ path = "/tickle", kind = "huge", bytes = 4 * 1024 * 1024, count = 10 })
      for i = 1, 10 do
        abandon(m, i % 2 == 0 and "cut" or "rst")
      end
      answered(m)
      local st = m:state()
      assert.is_true(st.counters.http_requests >= 40, "requests seen: " .. st.counters.http_requests)
      local before = cpu_seconds(m.pid)
      local t0 = socket.gettime()
      socket.sleep(1.5) -- the idle window being measured
      local used = cpu_seconds(m.pid) - before
      local span = socket.gettime() - t0
      assert.is_true(used < 0.25 * span, string.format("%.2f s of CPU in %.2f s idle", used, span))
      answered(m)
    end)

    it("answers a new client even when more connections than it keeps open lie idle", function()
      local max = 512 -- the server's max_connections
      local held = {}
      for i = 1, max + 50 do -- connected, nothing sent: each waits for its head
        local c = socket.tcp()
        c:settimeout(2)
        assert(c:connect(m.host, m.port))
        held[i] = c
        if i % 100 == 0 then
          answered(m) -- also lets the mock accept the ones so far
        end
      end
      local worst = 0
      for _ = 1, 5 do
        worst = math.max(worst, answered(m))
      end
      assert.is_true(worst < 2, "slowest answer " .. worst .. " s")
      assert.is_true(m:state().counters.active_connections <= max)
      for _, c in ipairs(held) do
        c:close()
      end
    end)

    it("keeps answering while connections hang half-open, half-sent or unread", function()
      local held = {}
      for _ = 1, 40 do -- connected, nothing sent (over TLS: no handshake either)
        local c = socket.tcp()
        c:settimeout(2)
        assert(c:connect(m.host, m.port))
        held[#held + 1] = c
      end
      for _ = 1, 20 do -- half a request head
        local c = assert(m:connect())
        assert(c:send("POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\nContent-Le"))
        held[#held + 1] = c
      end
      for _ = 1, 10 do -- a head promising a body that never comes
        local c = assert(m:connect())
        assert(c:send("POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"))
        held[#held + 1] = c
      end
      m:fault({ path = "/tickle", kind = "huge", bytes = 8 * 1024 * 1024, count = 5 })
      for _ = 1, 5 do -- asks for a big answer, never reads it
        held[#held + 1] = (send_request(m))
      end
      local worst = 0
      for _ = 1, 10 do
        worst = math.max(worst, answered(m))
      end
      assert.is_true(worst < 2, "slowest answer " .. worst .. " s")
      local before = cpu_seconds(m.pid)
      local t0 = socket.gettime()
      socket.sleep(1.5) -- the idle window being measured, all those connections still open
      local used = cpu_seconds(m.pid) - before
      local span = socket.gettime() - t0
      assert.is_true(used < 0.25 * span, string.format("%.2f s of CPU in %.2f s", used, span))
      -- and it still stops at once on SIGTERM with all of them open
      local stop0 = socket.gettime()
      os.execute("kill -TERM " .. m.pid)
      assert.is_true(m:wait_exit(3), "still running 3 s after SIGTERM")
      assert.is_true(socket.gettime() - stop0 < 3)
      for _, c in ipairs(held) do
        c:close()
      end
    end)
  end)
end
