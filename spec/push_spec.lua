-- The push channel end to end against the mock gateway (its /v1/api/ws, over ws and wss): a
-- stream's subscriptions and tics, a keep-alive that holds the session's channel (a pushed change
-- reaches on_state before any REST call, a lost channel makes it ask over REST at once, recovery is
-- announced), reconnects after drops and silence, ibkr.run driving streams, proxies and OAuth.
-- Clients are driven on the real clock, waiting on their pollables; conditions are the mock's
-- counters and what the callbacks saw, never sleeps.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")

local SCALE = tonumber(os.getenv("IBKR_TIME_SCALE")) or 1

-- Resumes the coroutines (or streams) whenever due or their pollable is ready, until done() holds
-- (looked at after each round); fails the spec after `secs` real seconds (default 10).
local function drive(list, done, secs)
  local limit = core.monotonic() + (secs or 10) * SCALE
  local cos, wake, pol = {}, {}, {}
  for i, x in ipairs(list) do cos[i] = type(x) == "thread" and x or x:coroutine() end
  while not done() do
    assert(core.monotonic() < limit, "the spec's condition never came true")
    local now = core.monotonic()
    local fds, evs, earliest = {}, {}, now + 0.05
    for _, co in ipairs(cos) do
      local p = pol[co]
      local fd = p and p:pollfd() or -1
      local ready = fd >= 0 and core.poll({ fd }, 0, { p:events() }) ~= nil
      if coroutine.status(co) == "suspended" and (ready or not wake[co] or wake[co] <= now) then
        local ok, w, p2 = coroutine.resume(co)
        assert(ok, w)
        wake[co], pol[co] = core.monotonic() + (type(w) == "number" and w or 0), p2
        p, fd = p2, p2 and p2:pollfd() or -1
      end
      if coroutine.status(co) == "suspended" then
        if wake[co] < earliest then earliest = wake[co] end
        if fd >= 0 then fds[#fds + 1], evs[#evs + 1] = fd, p:events() end
      end
    end
    local left = earliest - core.monotonic()
    if left > 0 and not done() then core.poll(fds, left, evs) end
  end
end

local function only(got, topic, event)
  local t = {}
  for _, m in ipairs(got) do
    if m.topic == topic and (event == nil or m.event == event) then t[#t + 1] = m end
  end
  return t
end

for _, tls in ipairs({ false, true }) do
  describe("the push channel with the mock gateway over " .. (tls and "wss" or "ws"), function()
    local gw
    before_each(function()
      gw = assert(mock.start{ tls = tls, pacing = false, ws_heartbeat = 0.05, ws_greeting_delay = 0 })
    end)
    after_each(function() gw:stop() end)

    it("subscribes after the greeting, gets the answers, tics, and drops nothing", function()
      local s <close> = gw:session()
      local got = {}
      local st = s:stream{ topics = { "sor+{}" }, tic_interval = 0.05,
        on_message = function(m) got[#got + 1] = m end }
      st:subscribe("spl+{}")
      drive({ st }, function()
        return #only(got, "sor") == 1 and #only(got, "spl") == 1 and #only(got, "tic") >= 2
      end)
      assert.equal("system", got[1].topic)
      assert.equal(265598, only(got, "sor")[1].args[1].conid)
      assert.is_true(only(got, "tic")[1].alive)
      local w = gw:ws()
      assert.equal(0, w.counters.dropped_early)
      assert.equal(2, w.counters.subscribes)
      assert.same({ "sor", "spl" }, w.connections[1].subscriptions)
      st:unsubscribe("spl+{}")
      gw:ws_wait(function(x) return x.counters.unsubscribes == 1 end)
      st:close()
      -- the close frame, answered, then the gateway ends the connection: a close of the client's
      -- (over TLS too: the connection waits on the engine thread for the gateway's end)
      local closed = gw:ws_wait(function(x) return x.clients == 0 end).closed[1]
      assert.same({ "peer", 1000 }, { closed.how, closed.code })
    end)

    it("keeps a pushed competing login from on_state's point of view before any REST call", function()
      local s <close> = gw:session()
      local seen = {}
      local ka = s:keepalive{ push = true, interval = 60, on_state = function(new, _, detail)
        seen[#seen + 1] = { new, detail }
      end }
      drive({ ka }, function() return #seen == 1 and gw:ws().counters.greeted == 1 end)
      local tickles = #gw:api_log("/tickle")
      gw:set_state("competing")
      drive({ ka }, function() return #seen == 2 end)
      assert.equal("competing", seen[2][1])
      -- the detail is the pushed sts args, not a REST status: the push told first
      assert.same({ competing = true }, seen[2][2])
      assert.equal("competing", (s:state()))
      -- and the keep-alive checks over REST at once (its interval is 60 s)
      drive({ ka }, function() return #gw:api_log("/tickle") > tickles end)
      s:stop()
    end)

    it("makes the keep-alive ask over REST at once after a loss, and announces recovery", function()
      local s <close> = gw:session()
      local got, seen = {}, {}
      local ka = s:keepalive{ push = true, interval = 60, retry_interval = 0.2,
        on_state = function(new) seen[#seen + 1] = new end }
      local st = s:stream{ on_message = function(m) got[#got + 1] = m end }
      drive({ ka, st }, function() return gw:ws().counters.greeted == 2 end)
      local tickles = #gw:api_log("/tickle")
      gw:ws_drop()
      drive({ ka, st }, function() return #gw:api_log("/tickle") > tickles end)
      -- a drop of authentication is pushed; the keep-alive repairs; REST confirms; streams hear it
      gw:set_state("unauthenticated")
      drive({ ka, st }, function() return #only(got, "ibkr", "authenticated") == 1 end, 20)
      local ev = only(got, "ibkr", "authenticated")[1]
      assert.equal("ready", ev.state)
      assert.equal("unauthenticated", ev.previous)
      assert.same({ "ready", "unauthenticated", "ready" }, seen)
      assert.equal(1, #only(got, "ibkr", "lost"))
      s:stop()
      st:close()
    end)

    it("repairs at once when the session turns worse while its own channel is down", function()
      local s <close> = gw:session()
      local seen = {}
      local ka = s:keepalive{ push = true, interval = 60, retry_interval = 0.2,
        on_state = function(new) seen[#seen + 1] = new end }
      drive({ ka }, function() return gw:ws().counters.greeted == 1 end)
      gw:fault{ path = "/ws", kind = "status", status = 503, body = "{}", count = 1000 }
      local calls = s:stats().requests
      gw:ws_drop()
      drive({ ka }, function() return s:stats().requests > calls end) -- its at-once check: ready
      -- the session drops while the channel cannot come back; a call of the user's sees it
      gw:set_state("unauthenticated")
      assert.equal("unauthenticated", (s:health()))
      -- the keep-alive learns it from the session (its channel now waits for a repair) and repairs
      drive({ ka }, function() return #seen == 3 end)
      assert.same({ "ready", "unauthenticated", "ready" }, seen)
      s:stop()
    end)

    it("reconnects after silence and after a drop, topics again, and says so", function()
      local s <close> = gw:session()
      local got = {}
      local st = s:stream{ topics = { "sor+{}" }, heartbeat_timeout = 1 * SCALE,
        on_message = function(m) got[#got + 1] = m end }
      drive({ st }, function() return #only(got, "sor") == 1 end)
      gw:ws_freeze(true)
      drive({ st }, function() return #only(got, "ibkr", "lost") >= 1 end)
      assert.equal("timeout", only(got, "ibkr", "lost")[1].error.kind)
      gw:ws_freeze(false)
      drive({ st }, function() return #only(got, "ibkr", "reconnected") >= 1 and #only(got, "sor") >= 2 end)
      gw:ws_drop()
      drive({ st }, function() return #only(got, "ibkr", "reconnected") >= 2 and #only(got, "sor") >= 3 end)
      assert.equal("open", (st:state()))
      st:close()
    end)

    it("is driven by ibkr.run with a keep-alive, and ends with the session", function()
      local s = gw:session{ cooperative = true }
      local got = {}
      local st = s:stream{ on_message = function(m) got[#got + 1] = m end }
      local ka = s:keepalive{ push = true }
      local stopper = coroutine.create(function()
        while #only(got, "system") < 1 do coroutine.yield(0.01) end
        s:close()
      end)
      assert.is_true(ibkr.run({ ka, st, stopper }, { duration = 10 * SCALE }))
      assert.equal("closed", (st:state()))
      gw:ws_wait(function(x) return x.clients == 0 end)
    end)
  end)
end

describe("the keep-alive with push, against a gateway that paces", function()
  it("sends no tickle before its slot when the channel's news comes during the pacing wait", function()
    local gw <close> = assert(mock.start{ ws_heartbeat = 0.05, ws_greeting_delay = 0 })
    local s <close> = gw:session()
    local seen = {}
    local ka = s:keepalive{ push = true, interval = 1, compete = true,
      on_state = function(new) seen[#seen + 1] = new end }
    drive({ ka }, function() return gw:ws().counters.greeted == 1 end)
    -- a logout, then a login: the channel is lost, comes back and says so while the keep-alive
    -- probes over REST a second after its last tickle
    assert(s:logout())
    drive({ ka }, function() return seen[#seen] == "no_session" end, 20)
    gw:login()
    drive({ ka }, function() return seen[#seen] == "ready" and gw:ws().counters.greeted >= 2 end, 20)
    local n = 0
    for _, e in ipairs(gw:api_log("/tickle")) do
      n = n + 1
      assert.are_not.equal(429, e.status, "a tickle before its slot")
    end
    assert.is_true(n >= 3)
    s:stop()
  end)
end)

describe("keepalive_loop with push", function()
  for _, how in ipairs({ "blocking", "a host's sleep" }) do
    it("hears a pushed change while it waits (" .. how .. ")", function()
      local gw <close> = assert(mock.start{ pacing = false, ws_greeting_delay = 0 })
      local s <close> = gw:session()
      local seen = {}
      -- once greeted, the test makes the gateway see a competing login (the loop blocks this
      -- thread: the change is made from its own callback)
      local push = { on_message = function(m)
        if m.topic == "system" and m.success then gw:set_state("competing") end
      end }
      local opts = { push = push, interval = 600, on_state = function(new, _, detail)
        seen[#seen + 1] = { new, detail }
        if new ~= "ready" then s:stop() end
      end }
      if how ~= "blocking" then opts.sleep = core.sleep end
      s:keepalive_loop(opts)
      assert.equal("competing", seen[2][1])
      assert.same({ competing = true }, seen[2][2])
    end)
  end
end)

describe("the push channel's routes and credentials", function()
  it("goes through an explicit proxy as a tunnel, like REST", function()
    local gw <close> = assert(mock.start{ pacing = false, ws_greeting_delay = 0 })
    local p = assert(io.popen("echo $$; exec lua5.4 spec/helpers/fake_proxy.lua"))
    local pid, port = assert(tonumber(p:read("l"))), assert(tonumber(p:read("l")))
    -- the fake proxy answers 200 to CONNECT and then nothing: the upgrade gets no answer
    local s <close> = ibkr.new{ base_url = gw.url, proxy = "http://127.0.0.1:" .. port, verify = false }
    s:push_note("x")
    local ws = s:push_socket("x")
    local limit = core.monotonic() + 10 * SCALE
    while ws:state() == "connecting" do
      assert(core.monotonic() < limit)
      ws:step()
      if ws:state() == "connecting" then core.poll({ ws:pollfd() }, 0.05) end
    end
    local state, err = ws:state()
    ws:close()
    assert.equal("closed", state)
    assert.equal("tls", err.kind) -- the fake proxy hangs up after its 200: no TLS handshake
    assert.matches("^CONNECT 127%.0%.0%.1:" .. gw.port .. " HTTP/1%.1", p:read("l"))
    os.execute("kill " .. pid)
    p:close()
  end)

  it("authenticates as IBKR documents for OAuth 1.0a", function()
    local oauth = require("ibkr.oauth")
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local gw <close> = assert(mock.start{ pacing = false, ws_greeting_delay = 0, state = "ready",
      args = { "--oauth", "--oauth-dir", dir } })
    local cfg = assert(oauth.read_config(dir .. "/oauth.conf"))
    local s <close> = ibkr.new{ base_url = gw.url, oauth = cfg, pacing = false }
    local got = {}
    local st = s:stream{ on_message = function(m) got[#got + 1] = m end }
    drive({ st }, function() return #only(got, "system") == 1 end)
    local c = gw:ws().connections[1]
    assert.equal("cookie", c.auth)
    st:close()
    os.execute("rm -rf " .. dir)
  end)

  it("redacts the bearer token from a refused upgrade that echoes it (OAuth 2.0)", function()
    local gw <close> = assert(mock.start{ pacing = false, ws_greeting_delay = 0, state = "ready",
      oauth2 = { key_bits = 2048 } })
    local s <close> = gw:oauth2_session{ pacing = false }
    assert(s:tickle())
    gw:oauth2{ echo = 1, echo_at = "ws" }
    local got = {}
    local st = s:stream{ on_message = function(m) got[#got + 1] = m end }
    drive({ st }, function() return #only(got, "ibkr", "reconnected") == 1 end)
    local err = only(got, "ibkr", "lost")[1].error
    assert.equal("http", err.kind)
    assert.equal(401, err.status)
    local text = require("ibkr.core").encode{ message = err.message, body = err.body, data = err.data,
      hint = err.hint }
    assert.matches("Authorization: Bearer %[redacted%]", text)
    assert.matches("bearer_token=%[redacted%]", text)
    for _, secret in ipairs(s._call.oauth:secrets()) do
      assert.is_nil(text:find(secret, 1, true), "a secret shows in the error")
    end
    st:close()
  end)

  it("authenticates as IBKR takes it for OAuth 2.0, and renews the bearer the upgrade was refused", function()
    local wsc = require("spec.helpers.ws")
    local gw <close> = assert(mock.start{ pacing = false, ws_greeting_delay = 0, state = "ready",
      oauth2 = { key_bits = 2048 } })
    local s <close> = gw:oauth2_session{ pacing = false }
    local got = {}
    local st = s:stream{ on_message = function(m) got[#got + 1] = m end }
    drive({ st }, function() return #only(got, "system") == 1 end)
    assert.equal("cookie", gw:ws().connections[1].auth)
    local sso = gw:oauth2().counters.sso_requests
    -- IBKR takes the SSO session's bearer in the upgrade's query, not the header alone
    local _, why, resp = wsc.connect(gw, { headers = { { "Upgrade", "websocket" },
      { "Connection", "Upgrade" }, { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" },
      { "Sec-WebSocket-Version", "13" }, { "Cookie", wsc.cookie(gw:state().session) } } })
    assert.equal("refused with 401", why)
    assert.matches("bearer_token", resp.body)
    -- the SSO session expires: the next upgrade is refused, the stream tickles (renewing the
    -- bearer through the session's caller) and comes back
    gw:oauth2{ expire = "sessions" }
    gw:ws_drop()
    drive({ st }, function() return #only(got, "ibkr", "reconnected") == 1 end)
    assert.is_true(gw:oauth2().counters.sso_requests > sso)
    assert.is_true(gw:ws().counters.refused >= 1)
    st:close()
  end)
end)
