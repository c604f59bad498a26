-- The mock gateway survives its clients and shares itself fairly between them: clients that send a
-- request and vanish without reading the answer (over TLS without close_notify, or with a reset),
-- half-open and never-finished connections, readers that stop reading, clients that pipeline
-- without end, send unread bursts or read an endless answer as fast as it comes. One client only
-- ever costs its own share: the mock keeps answering others (in turns), never spins a core while
-- idle and still stops on SIGTERM.
local socket = require("socket")
local mock = require("spec.helpers.mock")
local raw = require("spec.helpers.raw")

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

-- A normal client's request must be answered whatever the others do (it gives up after 10 s).
local function answered(m)
  local r, err = m:request("POST", "/v1/api/iserver/auth/status", { timeout = 10 })
  assert(r, "no answer: " .. tostring(err))
  assert.equals(200, r.status)
end

-- Starts spec/helpers/greedy_client.lua against m in `mode` ("pipeline" | "huge") and returns
-- once it says its greed is under way: {next = function -> its next progress line, stop = ...}.
local function greedy(m, mode)
  local p = assert(io.popen("echo $$; exec env -u LD_PRELOAD lua5.4 spec/helpers/greedy_client.lua "
    .. m.host .. " " .. m.port .. " " .. (m.tls and "tls" or "plain") .. " " .. mode .. " 2>&1"))
  local pid = assert(tonumber(p:read("l")))
  local first = p:read("l")
  assert(first and first:match("^greedy "), "the greedy client did not get going: " .. tostring(first))
  return {
    next = function() return p:read("l") end,
    stop = function()
      os.execute("kill " .. pid)
      p:close()
    end,
  }
end

-- Sends `request` over connection c (a mock.connect client) as many times as the socket takes
-- without blocking, up to n; returns how many went out whole.
local function burst(c, request, n)
  local data = request:rep(n)
  c:settimeout(0)
  local i = 1
  while i <= #data do
    local last, err, partial = c.sock:send(data, i)
    local upto = last or partial or i - 1
    if upto < i then
      assert(err == "timeout" or err == "wantwrite" or err == "wantread", err)
      break
    end
    i = upto + 1
  end
  c:settimeout(10)
  return (i - 1) // #request
end

for _, tls in ipairs({ true, false }) do
  local scheme = tls and "https" or "http"

  describe("mock gateway under a flood of bad clients over " .. scheme, function()
    local m

    before_each(function()
      m = assert(mock.start({ tls = tls, pacing = false }))
    end)

    after_each(function()
      raw.thaw(m.pid) -- (a spec that stopped it and failed before resuming it)
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
      for _ = 1, 5 do
        answered(m)
      end
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
      for _ = 1, 10 do
        answered(m)
      end
      local before = cpu_seconds(m.pid)
      local t0 = socket.gettime()
      socket.sleep(1.5) -- the idle window being measured, all those connections still open
      local used = cpu_seconds(m.pid) - before
      local span = socket.gettime() - t0
      assert.is_true(used < 0.25 * span, string.format("%.2f s of CPU in %.2f s", used, span))
      -- and it still stops at once on SIGTERM with all of them open
      os.execute("kill -TERM " .. m.pid)
      assert.is_true(m:wait_exit(10), "still running 10 s after SIGTERM")
      for _, c in ipairs(held) do
        c:close()
      end
    end)

    describe("shared fairly between its clients", function()
      -- five requests of another client answered while the greedy one keeps at it
      local function others_answered(mode)
        local g = greedy(m, mode)
        for _ = 1, 5 do
          answered(m)
        end
        assert.matches("^greedy ", g.next() or "", "the greedy client stopped")
        g.stop()
      end

      it("answers others while one client pipelines requests without end and reads every answer", function()
        others_answered("pipeline") -- 1,000 requests always in flight, for ever
      end)

      it("answers others while one client reads an endless answer as fast as it comes", function()
        m:fault({ path = "/tickle", kind = "huge", bytes = 2 ^ 40 })
        others_answered("huge")
      end)

      it("takes clients with unread bursts of pipelined requests in turns, others between them", function()
        local a1, a2, b = assert(m:connect()), assert(m:connect()), assert(m:connect())
        -- with the mock stopped, both bursts and b's request wait in its sockets: it finds them all
        -- at once when it resumes
        raw.freeze(m.pid)
        local n1 = burst(a1, "POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 20000)
        local n2 = burst(a2, "GET /v1/api/sso/validate HTTP/1.1\r\nHost: x\r\n\r\n", 20000)
        assert(b:send("POST /v1/api/iserver/auth/status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
        raw.thaw(m.pid)
        assert.equals(200, assert(b:read_response()).status)
        assert.is_true(n1 > 200 and n2 > 200, "bursts of " .. n1 .. " and " .. n2 .. " requests")
        -- the first 200 requests it served (the answers of as many fit in the sockets unread)
        local log, give_up = m:log(), socket.gettime() + 10
        while #log < 201 and socket.gettime() < give_up do
          socket.sleep(0.01) -- (polling the log for what the mock has served)
          log = m:log()
        end
        assert.is_true(#log >= 201, "only " .. #log .. " requests served")
        local apis, before_b = {}, nil
        for i = 1, 201 do
          apis[i] = log[i].api
          if apis[i] == "/iserver/auth/status" then
            before_b = i - 1
          end
        end
        -- b's request went before most of either burst, and the bursts alternated in short runs
        assert.is_true(before_b and before_b < 50, tostring(before_b) .. " requests of the bursts went first")
        local run, longest = 0, 0
        for i = 1, 201 do
          run = apis[i] == apis[i - 1] and run + 1 or 1
          longest = math.max(longest, run)
        end
        assert.is_true(longest < 50, "one burst had " .. longest .. " requests served in a row")
        a1:close()
        a2:close()
        b:close()
      end)
    end)
  end)
end
