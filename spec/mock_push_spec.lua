-- The mock gateway's push channel (/v1/api/ws) as the gateway behaves: authentication by cookie or
-- session message, the greeting, frames dropped before it, heartbeats, tic, sts on state changes
-- (never on recovery), canned topic answers, and the control API (ibkr.mock.testing's gw:ws_*).
-- Every wait is for an event: a message read, or a state of the mock seen through its control API.
local socket = require("socket")
local mock = require("spec.helpers.mock")
local wsc = require("spec.helpers.ws")

local function sts_args(list)
  local out = {}
  for _, m in ipairs(list) do
    if m.topic == "sts" then
      out[#out + 1] = m.args
    end
  end
  return out
end

describe("mock gateway websocket", function()
  local gw

  -- A greeted client for each test of the enclosing describe (box.c), shut after it.
  local function each_greeted()
    local box = {}
    before_each(function()
      box.c = assert(wsc.connect(gw))
      box.c:greeting()
    end)
    after_each(function()
      box.c:shutdown()
    end)
    return box
  end

  setup(function()
    gw = assert(mock.start({ tls = false, pacing = false, ws_greeting_delay = 0, init_delay = 0 }))
  end)
  teardown(function()
    gw:stop()
  end)
  before_each(function()
    gw:reset()
  end)

  describe("authentication", function()
    it("takes the session from the api cookie, as /tickle gives it, and greets", function()
      local tickle = mock.json(assert(gw:request("POST", "/v1/api/tickle")))
      local c = assert(wsc.connect(gw, { cookie = wsc.cookie(tickle.session) }))
      local sys = c:greeting()
      assert.equals("mockuser1", sys.success)
      local st = gw:ws_wait(function(w) return w.clients == 1 end)
      assert.equals(tickle.session, st.connections[1].session)
      assert.equals("cookie", st.connections[1].auth)
      c:close(1000)
    end)

    it("takes the cookie as ibind writes it (a space after the colon) and IBKR's bare form", function()
      local sid = gw:state().session
      for _, cookie in ipairs({ 'x=1; api={"session": "' .. sid .. '"}; y=2', "api=" .. sid }) do
        local c = assert(wsc.connect(gw, { cookie = cookie }))
        c:greeting()
        c:close(1000)
      end
    end)

    it("without a cookie says 'waiting for session' and greets after a {\"session\":...} message", function()
      local c = assert(wsc.connect(gw, { cookie = false }))
      assert.same({ message = "waiting for session" }, c:next())
      c:send_text("tic") -- not a session message: dropped
      c:send_text('{"session":"' .. gw:state().session .. '"}')
      c:greeting()
      local w = gw:ws()
      assert.equals("message", w.connections[1].auth)
      assert.equals(1, w.counters.dropped_early)
      c:close(1000)
    end)

    it("closes with 1008 a session message naming another session", function()
      local c = assert(wsc.connect(gw, { cookie = false }))
      c:next()
      c:send_text('{"session":"0123456789abcdef0123456789abcdef"}')
      assert.same({ close = 1008, reason = "invalid session" }, c:next())
    end)

    it("closes with 1008 a connection that never names its session (ws_session_timeout)", function()
      gw:config({ ws_session_timeout = 0.2 })
      local c = assert(wsc.connect(gw, { cookie = false }))
      c:next()
      assert.same({ close = 1008, reason = "no session" }, c:next())
      assert.equals(1, gw:ws().counters.session_timeouts)
    end)

    it("refuses with 401 a cookie naming another session, and any handshake after a logout", function()
      local _, err, resp = wsc.connect(gw, { session = "0123456789abcdef0123456789abcdef" })
      assert.equals("refused with 401", err)
      assert.same({ error = "no session" }, mock.json(resp))
      assert.equals("close", resp.headers.connection)
      gw:request("POST", "/v1/api/logout")
      _, err = wsc.connect(gw)
      assert.equals("refused with 401", err)
      assert.equals(2, gw:ws().counters.refused)
    end)

    it("refuses with 503 past ws_max_clients", function()
      gw:config({ ws_max_clients = 1 })
      local c = assert(wsc.connect(gw))
      local _, err, resp = wsc.connect(gw)
      assert.equals("refused with 503", err)
      assert.same({ error = "too many websocket connections" }, mock.json(resp))
      c:close(1000)
    end)

    it("takes faults and the penalty box like any endpoint (path \"/ws\")", function()
      gw:fault({ path = "/ws", kind = "status", status = 200, body = "{}" })
      local _, err = wsc.connect(gw)
      assert.equals("refused with 200", err)
      gw:fault({ path = "/ws", kind = "delay", seconds = 0, headers = { ["Sec-WebSocket-Accept"] = "x" } })
      local ok, why = pcall(wsc.connect, gw)
      assert.is_false(ok)
      assert.matches("wrong Sec%-WebSocket%-Accept", why)
      gw:fault({ path = "/ws", kind = "drop" })
      _, err = wsc.connect(gw)
      assert.equals("closed", err)
      gw:penalty({ seconds = 30 })
      _, err = wsc.connect(gw)
      assert.equals("refused with 429", err)
      gw:clear_penalty()
      local c = assert(wsc.connect(gw))
      c:greeting()
      c:close(1000)
    end)

    it("is logged like an API request; its traffic is no API activity", function()
      local c = assert(wsc.connect(gw))
      c:greeting()
      local log = gw:api_log("/ws")
      assert.equals(1, #log)
      assert.equals(101, log[1].status)
      assert.matches('^api={"session":"%x+"}$', log[1].headers.cookie)
      -- only REST requests hold the session: without them it expires, tic or not
      gw:set_state({ state = "ready", idle_timeout = 0.3 })
      c:send_text("tic")
      assert.same({ authenticated = false }, c:until_(function(m) return m.topic == "sts" end).args)
      c:close(1000)
    end)
  end)

  describe("greeting", function()
    it("is system success, act, then sts with the whole status; frames before it are dropped", function()
      gw:config({ ws_greeting_delay = 3600 })
      gw:set_state("competing")
      local c = assert(wsc.connect(gw))
      c:send_text("tic")
      c:send_text("sor+{}")
      gw:ws_wait(function(w) return w.counters.dropped_early == 2 end)
      assert.equals(1, gw:ws_greet())
      local sys, act, sts = c:greeting()
      assert.same({ topic = "system", success = "mockuser1", isFT = false, isPaper = true }, sys)
      assert.equals("act", act.topic)
      assert.same({ "DU1234567" }, act.args.accounts)
      assert.equals("sts", sts.topic)
      assert.is_true(sts.args.authenticated)
      assert.is_true(sts.args.competing)
      assert.is_true(sts.args.connected)
      assert.equals("", sts.args.message)
      assert.equals("", sts.args.fail)
      -- the early tic and sor got no answer: the first answer is to this tic
      c:send_text("tic")
      local tic, before = c:until_(function(m) return m.topic == "tic" end)
      assert.same({}, before)
      assert.equals(1, gw:ws().counters.tics)
      local msgs = gw:ws_messages()
      assert.is_true(msgs[1].dropped)
      assert.is_true(msgs[2].dropped)
      assert.equals("tic", msgs[3].kind)
      assert.is_true(tic.alive)
      c:close(1000)
    end)

    it("tells an unauthenticated session as it is", function()
      gw:set_state("disconnected")
      local c = assert(wsc.connect(gw))
      local _, _, sts = c:greeting()
      assert.is_false(sts.args.authenticated)
      assert.is_false(sts.args.connected)
      c:close(1000)
    end)
  end)

  it("sends a heartbeat every ws_heartbeat seconds, stops and resumes them on request", function()
    gw:config({ ws_heartbeat = 0.05 })
    local c = assert(wsc.connect(gw))
    c:greeting()
    local last = 0
    for _ = 1, 3 do
      local hb = c:until_(wsc.is_heartbeat)
      assert.equals(0, hb.hb % 1)
      assert.is_true(hb.hb >= last)
      assert.is_true(math.abs(hb.hb / 1000 - os.time()) < 120)
      last = hb.hb
    end
    assert.is_false(gw:ws_heartbeats(false))
    c:drain(gw) -- a heartbeat queued before the stop is read here
    assert.same({ nil, "timeout" }, { c:next(0.5) }) -- ten periods and not one heartbeat
    assert.is_true(gw:ws_heartbeats(true))
    c:until_(wsc.is_heartbeat)
    c:close(1000)
  end)

  it("answers tic with the session id and lastAccessed, and echoes ech+hb", function()
    local c = assert(wsc.connect(gw))
    c:greeting()
    local st = gw:state()
    c:send_text("tic")
    local tic = c:until_(function(m) return m.topic == "tic" end)
    assert.same({ topic = "tic", alive = true, id = st.session, lastAccessed = tic.lastAccessed }, tic)
    assert.equals(0, tic.lastAccessed % 1)
    c:send_text("ech+hb")
    assert.same({ text = "ech+hb" }, c:until_(function() return true end))
    c:close(1000)
  end)

  describe("sts", function()
    local box = each_greeted()

    it("is pushed on every drop made through the control API, never on the recovery", function()
      local c = box.c
      gw:set_state("competing")
      assert.same({ { competing = true } }, sts_args(c:drain(gw)))
      gw:set_state("ready")
      assert.same({}, sts_args(c:drain(gw)))
      gw:set_state("disconnected")
      assert.same({ { authenticated = false }, { connected = false } }, sts_args(c:drain(gw)))
      gw:set_state("unauthenticated")
      assert.same({}, sts_args(c:drain(gw)))
      assert.equals(3, gw:ws().counters.sts)
    end)

    it("is pushed when the session expires by itself, and not when ssodh/init brings it back", function()
      local c = box.c
      gw:set_state({ state = "competing", idle_timeout = 0.2 })
      c:until_(function(m) return m.topic == "sts" end)
      local _, before = c:until_(function(m) return m.topic == "sts" and m.args.authenticated == false end)
      assert.same({}, before)
      assert.same({ competing = false }, c:next().args)
      assert.equals("unauthenticated", gw:state().state)
      gw:config({ idle_timeout = 0 })
      local init = gw:request("POST", "/v1/api/iserver/auth/ssodh/init", {
        body = '{"publish":true,"compete":true}', headers = { ["Content-Type"] = "application/json" } })
      assert.equals(200, init.status)
      assert.equals("ready", gw:state().state)
      assert.same({}, sts_args(c:drain(gw)))
    end)

    it("is pushed when a repaired session relapses (the setting relapse), at its time", function()
      local c = box.c
      gw:config({ relapse = 0.2 })
      gw:set_state("unauthenticated")
      assert.same({ { authenticated = false } }, sts_args(c:drain(gw)))
      local init = gw:request("POST", "/v1/api/iserver/auth/ssodh/init", {
        body = '{"publish":true,"compete":false}', headers = { ["Content-Type"] = "application/json" } })
      assert.equals(200, init.status)
      -- 0.2 s later, without a request (heartbeats every 10 s): the relapse, pushed
      local m = c:until_(function(x) return x.topic == "sts" end)
      assert.same({ authenticated = false }, m.args)
      assert.equals("unauthenticated", gw:state().state)
      assert.equals(1, gw:state().counters.relapses)
    end)

    it("pushes the recovery too with ws_push_recovery", function()
      local c = box.c
      gw:config({ ws_push_recovery = true })
      gw:set_state("unauthenticated")
      gw:set_state("ready")
      assert.same({ { authenticated = false }, { authenticated = true } }, sts_args(c:drain(gw)))
    end)

    it("goes quiet on idle expiry with ws_quiet_expiry: no sts, no heartbeat, no answer", function()
      local c = box.c
      gw:set_state({ state = "ready", ws_quiet_expiry = true, ws_heartbeat = 0.05 })
      c:until_(wsc.is_heartbeat)
      gw:config({ idle_timeout = 0.1 })
      gw:ws_wait(function(w) return w.connections[1].quiet end)
      c:send_text("tic")
      local before = c:drain(gw)
      for _, m in ipairs(before) do
        assert.is_nil(m.topic == "sts" and m or nil)
        assert.is_nil(m.topic == "tic" and m or nil)
      end
      assert.same({ nil, "timeout" }, { c:next(0.5) })
    end)

    it("says authenticated false and closes on logout; a login ends the connection too", function()
      local c = box.c
      gw:request("POST", "/v1/api/logout")
      local close, before = c:until_(function(m) return m.close ~= nil end)
      assert.same({ { authenticated = false } }, sts_args(before))
      assert.same({ close = 1000, reason = "logged out" }, close)
      gw:login()
      local c2 = assert(wsc.connect(gw))
      c2:greeting()
      gw:login()
      local close2 = c2:until_(function(m) return m.close ~= nil end)
      assert.same({ close = 1000, reason = "session ended" }, close2)
      c2:shutdown()
    end)
  end)

  describe("topics", function()
    local box = each_greeted()

    local function ask(text)
      box.c:send_text(text)
      return box.c:until_(function() return true end)
    end

    it("answers sor, str, spl and smd with IBKR's shapes and lists the subscriptions", function()
      local c = box.c
      local sor = ask("sor+{}")
      assert.equals("sor", sor.topic)
      assert.equals("DU1234567", sor.args[1].acct)
      assert.equals("Submitted", sor.args[1].status)
      local str = ask("str+{}")
      assert.equals("str", str.topic)
      assert.equals("DU1234567", str.args[1].account)
      local spl = ask("spl+{}")
      assert.equals(1, spl.args["DU1234567.Core"].rowType)
      local smd = ask('smd+265598+{"fields":["31","84","99999"]}')
      assert.equals("smd+265598", smd.topic)
      assert.equals(265598, smd.conid)
      assert.equals("172.50", smd["31"])
      assert.equals("172.49", smd["84"])
      assert.is_nil(smd["99999"])
      local smh = ask('smh+265598+{"period":"1d","bar":"1min"}')
      assert.equals("smh+265598", smh.topic)
      local subs = gw:ws().connections[1].subscriptions
      assert.same({ "smd+265598", "smh+" .. smh.serverId, "sor", "spl", "str" }, subs)
      for _, u in ipairs({ "uor+{}", "utr+{}", "upl+{}", "umd+265598+{}", "umh+" .. smh.serverId }) do
        c:send_text(u)
      end
      gw:ws_wait(function(w) return w.counters.unsubscribes == 5 end)
      assert.same({}, gw:ws().connections[1].subscriptions)
      assert.same({}, c:drain(gw)) -- unsubscribing is not answered
    end)

    it("answers unknown topics and bad arguments with an error, and a late session message too", function()
      assert.same({ error = "Topic unknown 'xyz'" }, ask("xyz+{}"))
      assert.same({ error = "Topic unknown '{\"s'" }, ask('{"session":"' .. gw:state().session .. '"}'))
      assert.same({ error = "Bad Request: arguments of sor must be a JSON object" }, ask("sor+{oops"))
      assert.same({ error = "Bad Request: bad contract id AAPL" }, ask("smd+AAPL+{}"))
      local w = gw:ws()
      assert.equals(2, w.counters.unknown)
      assert.equals(2, w.counters.bad)
    end)

    it("sends no data without a brokerage session, but remembers the subscription", function()
      local c = box.c
      gw:set_state("unauthenticated")
      c:send_text("sor+{}")
      local before = c:drain(gw)
      assert.same({ { authenticated = false } }, sts_args(before))
      assert.equals(1, #before)
      assert.same({ "sor" }, gw:ws().connections[1].subscriptions)
    end)
  end)

  describe("controls", function()
    it("drop ends connections at once, or with a close code", function()
      local c1, c2 = assert(wsc.connect(gw)), assert(wsc.connect(gw))
      c1:greeting()
      c2:greeting()
      local w = gw:ws_wait(function(s) return s.clients == 2 end)
      assert.equals(1, gw:ws_drop({ conn = w.connections[1].conn }))
      assert.is_true(c1:eof())
      assert.is_nil(c1.got_close)
      assert.equals(1, gw:ws_drop({ code = 4001, reason = "maintenance" }))
      assert.same({ close = 4001, reason = "maintenance" }, c2:until_(function(m) return m.close ~= nil end))
      c2:close(4001)
      w = gw:ws_wait(function(s) return s.clients == 0 and s.counters.closes.server == 1 end)
      assert.equals(1, w.counters.closes.dropped)
      assert.equals(4001, w.closed[2].code)
      assert.has_error(function() gw:ws_drop({ code = 1006 }) end)
    end)

    it("push sends any message, text, raw bytes or a ping; the client's pong is counted", function()
      local c = assert(wsc.connect(gw))
      c:greeting()
      assert.equals(1, gw:ws_push({ topic = "sts", args = { competing = true } }))
      assert.same({ topic = "sts", args = { competing = true } }, c:until_(function() return true end))
      gw:ws_push("not json", { ["repeat"] = 2 })
      assert.same({ text = "not json" }, c:until_(function() return true end))
      assert.same({ text = "not json" }, c:until_(function() return true end))
      gw:ws_push_raw("\x81\x05Hello") -- a frame written by hand
      assert.same({ text = "Hello" }, c:until_(function() return true end))
      local hostile = "\x81\x85abcd\x29\x07\x0f\x08\x0e" -- a masked server frame, sent as it is
      gw:ws_push_raw(hostile)
      assert.equals(hostile, c:read_bytes(#hostile, socket.gettime() + 5))
      gw:ws_ping("are you there")
      c:send_text("tic")
      c:until_(function(m) return m.topic == "tic" end)
      assert.equals("are you there", c.last_ping)
      local w = gw:ws_wait(function(s) return s.counters.pongs == 1 end)
      assert.equals(1, w.counters.pings)
      assert.equals(6, w.counters.pushed)
      c:close(1000)
    end)

    it("freeze makes the gateway hang: nothing read or written until it thaws", function()
      local c = assert(wsc.connect(gw))
      c:greeting()
      assert.is_true(gw:ws_freeze(true))
      c:send_text("tic")
      assert.same({ nil, "timeout" }, { c:next(0.3) })
      assert.equals(0, gw:ws().counters.tics)
      gw:ws_freeze(false)
      assert.equals("tic", c:until_(function(m) return m.topic ~= nil end).topic)
      c:close(1000)
    end)

    it("refuses bad control requests with 400", function()
      for _, body in ipairs({ { code = 1005 }, { reason = "x" }, { conn = "1" }, { codes = 1000 } }) do
        assert.has_error(function() gw:control("POST", "/__mock/ws/drop", body) end)
      end
      for _, body in ipairs({ {}, { text = "a", ping = "b" }, { raw_hex = "abc" }, { ping = ("x"):rep(126) },
          { text = "\255" }, { text = "a", ["repeat"] = 0 } }) do
        assert.has_error(function() gw:control("POST", "/__mock/ws/push", body) end)
      end
      assert.has_error(function() gw:control("POST", "/__mock/ws/heartbeats", { enabled = "no" }) end)
      assert.has_error(function() gw:config({ ws_heartbeat = 0 }) end)
      assert.has_error(function() gw:config({ ws_push_recovery = 1 }) end)
    end)

    it("reset ends every connection and starts the counters again", function()
      local c = assert(wsc.connect(gw))
      c:greeting()
      gw:ws_heartbeats(false)
      gw:reset()
      assert.is_true(c:eof())
      local w = gw:ws()
      assert.same({ clients = 0, heartbeats = true, received = 0 },
        { clients = w.clients, heartbeats = w.heartbeats, received = w.counters.received })
    end)
  end)
end)

describe("mock gateway websocket in OAuth mode", function()
  it("takes api=<session> with ?oauth_token=<access token>, and refuses another token", function()
    local gw <close> = assert(mock.start({ tls = false, args = { "--oauth" }, ws_greeting_delay = 0 }))
    local token = gw:control("GET", "/__mock/oauth").access_token
    local sid = gw:state().session
    local c = assert(wsc.connect(gw, { cookie = "api=" .. sid, query = "oauth_token=" .. token }))
    local _, _, sts = c:greeting()
    assert.is_false(sts.args.authenticated) -- OAuth starts before ssodh/init
    c:close(1000)
    local _, err, resp = wsc.connect(gw, { cookie = "api=" .. sid, query = "oauth_token=nope" })
    assert.equals("refused with 401", err)
    assert.same({ error = "OAuth: invalid token" }, mock.json(resp))
  end)
end)

describe("ibkr.mock.testing's websocket helpers", function()
  it("pass ws_heartbeat and ws_greeting_delay on, give ws_url, and ws_wait fails with the state", function()
    local gw <close> = assert(mock.start({ ws_heartbeat = 0.5, ws_greeting_delay = 0 }))
    assert.equals("wss://" .. gw.host .. ":" .. gw.port .. "/v1/api/ws", gw.ws_url)
    local cfg = gw:config()
    assert.same({ 0.5, 0 }, { cfg.ws_heartbeat, cfg.ws_greeting_delay })
    local ok, err = pcall(gw.ws_wait, gw, function(w) return w.clients == 1 end, 0.1)
    assert.is_false(ok)
    assert.matches("condition not met within 0.1 s; state: {", err, 1, true)
    assert.has_error(function() mock.start({ ws_heartbeat = "fast" }) end,
      "ibkr.mock.testing.start: option ws_heartbeat must be a number")
  end)
end)
