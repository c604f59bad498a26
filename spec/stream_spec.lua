-- The push channel (s:stream) against a raw websocket server in this process
-- (spec/helpers/wsserver.lua): what goes on the wire (the upgrade, the cookie, masked frames,
-- nothing before the greeting, topics then queued sends, tic), what comes out (decoded messages,
-- events), reconnects, and how it ends. Timers run on a fake clock moved only when both sides are
-- quiet (wsserver.drive).
local ibkr = require("ibkr")
local core = require("ibkr.core")
local clock = require("spec.helpers.clock")
local wsserver = require("spec.helpers.wsserver")

local GREETING = wsserver.GREETING

-- a session of server srv on fake clock ft; a stream of it recording what on_message got
local function setup(opts, tls)
  local srv = wsserver.new{ tls = tls }
  local ft = clock.new()
  local s = ibkr.new{ base_url = srv.url, clock = ft.clock }
  local got = {}
  opts = opts or {}
  opts.on_message = opts.on_message or function(m) got[#got + 1] = m end
  local st = s:stream(opts)
  return srv, ft, s, st, got
end

-- the messages of topic `topic` (or events `event` of topic "ibkr") in got
local function only(got, topic, event)
  local t = {}
  for _, m in ipairs(got) do
    if m.topic == topic and (event == nil or m.event == event) then t[#t + 1] = m end
  end
  return t
end

local function opcodes(conn)
  local t = {}
  for _, f in ipairs(conn.frames) do t[#t + 1] = f.opcode end
  return t
end

for _, tls in ipairs({ false, true }) do
  describe("s:stream over " .. (tls and "wss" or "ws"), function()
    it("upgrades with the session's cookie and writes nothing before the greeting", function()
      local srv, ft, s, st = setup({ topics = { "sor+{}" } }, tls)
      assert.is_true(st:send("first"))
      assert.is_true(st:subscribe("spl+{}"))
      srv.on_upgrade = function(conn) conn:accept(); conn:ping("probe") end
      local co = st:coroutine()
      -- the pong to our ping shows the client read everything up to it: any early write is before
      wsserver.drive(co, srv, ft, function() return srv:last() and #srv:last().frames >= 1 end)
      local conn = srv:last()
      assert.same({ 10 }, opcodes(conn))
      assert.equal("probe", conn.frames[1].payload)
      assert.equal("GET /v1/api/ws HTTP/1.1", conn.request.line)
      assert.equal('api={"session":"' .. wsserver.SESSION .. '"}', conn.request.headers.cookie)
      assert.equal("13", conn.request.headers["sec-websocket-version"])
      assert.matches("^lua%-ibkr/", conn.request.headers["user-agent"])
      assert.equal("connecting", (st:state()))
      conn:text(GREETING)
      wsserver.drive(co, srv, ft, function() return #conn.frames >= 4 end)
      assert.same({ "sor+{}", "spl+{}", "first" }, conn:texts())
      for _, f in ipairs(conn.frames) do assert.is_true(f.masked) end
      local state, detail = st:state()
      assert.equal("open", state)
      assert.equal("user1", detail.success)
      assert.equal(1, srv.tickles) -- the session id came from a tickle of its own
      st:close()
      srv:close()
      s:close()
    end)

    it("hands every message over decoded, a text that is not JSON as { text = ... }", function()
      local srv, ft, s, st, got = setup(nil, tls)
      srv.on_upgrade = function(conn)
        conn:accept{ greet = true }
        conn:text('{"topic":"act","args":{"accounts":["U1"],"n":12345678901,"x":1.5,"z":null}}')
        conn:binary('{"topic":"sts","args":{"authenticated":true}}')
        conn:text("not json")
        conn:text("[1,null,3]")
      end
      wsserver.drive(st:coroutine(), srv, ft, function() return #got >= 5 end)
      assert.equal("system", got[1].topic)
      assert.same({ "U1" }, got[2].args.accounts)
      assert.equal("integer", math.type(got[2].args.n))
      assert.equal(1.5, got[2].args.x)
      assert.is_nil(got[2].args.z)
      assert.equal("sts", got[3].topic)
      assert.same({ text = "not json" }, got[4])
      assert.equal(ibkr.null, got[5][2])
      st:close()
      srv:close()
      s:close()
    end)

    it("answers 'waiting for session' with the session id, before the greeting", function()
      local srv, ft, s, st = setup({ topics = { "sor+{}" } }, tls)
      srv.on_upgrade = function(conn) conn:accept(); conn:text('{"message":"waiting for session"}') end
      srv.on_frame = function(conn, f)
        if f.opcode == 1 and f.payload:match("session") then conn:text(GREETING) end
      end
      wsserver.drive(st:coroutine(), srv, ft, function() return srv:last() and #srv:last():texts() >= 2 end)
      local texts = srv:last():texts()
      assert.same({ session = wsserver.SESSION }, core.decode(texts[1]))
      assert.equal("sor+{}", texts[2])
      st:close()
      srv:close()
      s:close()
    end)
  end)
end

describe("s:stream timers and reconnects", function()
  it("sends tic every tic_interval once greeted", function()
    local srv, ft, s, st = setup{ tic_interval = 10, heartbeat_timeout = 100 }
    local at = {}
    srv.on_frame = function(_, f) if f.payload == "tic" then at[#at + 1] = ft.t end end
    local co = st:coroutine()
    wsserver.drive(co, srv, ft, function() return st:state() == "open" end)
    local t0 = ft.t
    wsserver.drive(co, srv, ft, function() return #at >= 3 end)
    assert.near(t0 + 10, at[1], 0.01)
    assert.near(t0 + 20, at[2], 0.01)
    assert.near(t0 + 30, at[3], 0.01)
    st:close()
    srv:close()
    s:close()
  end)

  it("counts silence as a loss, says so, reconnects with backoff and sends its topics again", function()
    local srv, ft, s, st, got = setup{ topics = { "sor+{}" }, heartbeat_timeout = 30 }
    local co = st:coroutine()
    wsserver.drive(co, srv, ft, function() return srv:last() and #srv:last():texts() >= 1 end)
    local t_open = ft.t
    wsserver.drive(co, srv, ft, function() return #only(got, "ibkr", "lost") == 1 end)
    assert.near(t_open + 30, ft.t, 0.01)
    local lost = only(got, "ibkr", "lost")[1]
    assert.equal("timeout", lost.error.kind)
    assert.matches("nothing from the gateway for 30 s", lost.reason)
    local state, detail = st:state()
    assert.equal("connecting", state)
    assert.equal(lost.error, detail)
    wsserver.drive(co, srv, ft, function() return #only(got, "ibkr", "reconnected") == 1 end)
    assert.equal(2, srv.upgrades)
    -- the registry's backoff (kinds.REFUSALS.push): 1 s, plus up to 10 % at random
    assert.is_true(ft.t - t_open - 30 >= 1 - 0.01 and ft.t - t_open - 30 <= 1.1 + 0.01, "backoff of 1..1.1 s")
    assert.same({ "sor+{}" }, srv:last():texts())
    local re = only(got, "ibkr", "reconnected")[1]
    assert.equal(1, re.attempts)
    st:close()
    srv:close()
    s:close()
  end)

  it("backs off with jitter while refused, and says 'lost' once per outage", function()
    local srv, ft, s, st, got = setup()
    local refusals = 0
    srv.on_upgrade = function(conn)
      refusals = refusals + 1
      if refusals <= 4 then
        conn:accept{ status = 503, body = '{"error":"busy"}' }
      else
        conn:accept{ greet = true }
      end
    end
    local tried = {}
    local orig = srv.on_upgrade
    srv.on_upgrade = function(conn, req) tried[#tried + 1] = ft.t; orig(conn, req) end
    wsserver.drive(st:coroutine(), srv, ft, function() return st:state() == "open" end)
    assert.equal(5, #tried)
    for i = 2, 5 do
      local step = 2 ^ (i - 2) -- 1, 2, 4, 8 s, plus up to 10 % at random (kinds.backoff, class "push")
      local gap = tried[i] - tried[i - 1]
      assert.is_true(gap >= step - 0.01 and gap <= step * 1.1 + 0.01, "gap " .. gap .. " for step " .. step)
    end
    local lost = only(got, "ibkr", "lost")
    assert.equal(1, #lost)
    assert.equal("http", lost[1].error.kind)
    assert.equal(503, lost[1].error.status)
    assert.equal("busy", lost[1].error.data.error)
    assert.equal(4, only(got, "ibkr", "reconnected")[1].attempts)
    st:close()
    srv:close()
    s:close()
  end)

  it("on 401 forgets the session id, takes a new one from a tickle, waits while not authenticated", function()
    local srv, ft, s, st = setup()
    local authenticated = false
    srv.on_http = function(conn, req)
      if not req.path:match("/tickle$") then return false end
      srv.tickles = srv.tickles + 1
      local body = string.format('{"session":"id%d","iserver":{"authStatus":{"authenticated":%s,'
        .. '"connected":true}}}', srv.tickles, tostring(authenticated))
      conn:raw("HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
      return true
    end
    s:push_note("stale")
    srv.on_upgrade = function(conn, req)
      conn:accept(req.headers.cookie:match("stale") and { status = 401 } or { greet = true })
    end
    local co = st:coroutine()
    wsserver.drive(co, srv, ft, function() return srv.tickles >= 2 end)
    assert.equal(1, srv.upgrades) -- not authenticated: no upgrade tried with a new id
    assert.equal("unauthenticated", (s:state()))
    authenticated = true
    wsserver.drive(co, srv, ft, function() return st:state() == "open" end)
    assert.equal(2, srv.upgrades)
    assert.equal('api={"session":"id3"}', srv:last().request.headers.cookie)
    st:close()
    srv:close()
    s:close()
  end)
end)

describe("s:stream and the session's state", function()
  it("takes pushed drops as the session's state, never a stale shallower one", function()
    local srv, ft, s, st, got = setup()
    local co = st:coroutine()
    wsserver.drive(co, srv, ft, function() return st:state() == "open" end)
    local conn = srv:last()
    local function push(args)
      local n = #got
      conn:text('{"topic":"sts","args":' .. args .. '}')
      wsserver.drive(co, srv, ft, function() return #got > n end)
      return (s:state())
    end
    assert.equal("unauthenticated", push('{"authenticated":false}'))
    assert.equal("disconnected", push('{"connected":false}'))     -- applied to what was told
    s:observe("ready", {})                                        -- REST saw it ready again
    assert.equal("unauthenticated", push('{"authenticated":false}')) -- not the old "disconnected"
    s:observe("no_session", {})
    assert.equal("no_session", push('{"competing":true}'))         -- shallower: stale, not told
    st:close()
    srv:close()
    s:close()
  end)
end)

describe("s:stream ends", function()
  for _, tls in ipairs({ false, true }) do
    local over = tls and "wss" or "ws"
    it("st:close() sends a close frame, frees the connection, ends the coroutine (" .. over .. ")", function()
      local srv, ft, s, st = setup(nil, tls)
      local co = st:coroutine()
      wsserver.drive(co, srv, ft, function() return st:state() == "open" end)
      st:close()
      srv:wait_for(function() return srv:last().closed_by_client and srv:last().gone end)
      local f = srv:last().frames[#srv:last().frames]
      assert.equal(8, f.opcode)
      assert.equal(1000, (string.unpack(">I2", f.payload)))
      assert.equal("closed", (st:state()))
      assert.is_true(coroutine.resume(co))
      assert.equal("dead", coroutine.status(co))
      local ok, err = st:send("late")
      assert.is_nil(ok)
      assert.equal("closed", err.kind)
      srv:close()
      s:close()
    end)
  end

  it("s:close() ends the session's streams; coroutine.close ends a stream's connection", function()
    local srv, ft, s, st = setup()
    local st2 = s:stream{}
    wsserver.drive(st:coroutine(), srv, ft, function() return st:state() == "open" end)
    wsserver.drive(st2:coroutine(), srv, ft, function() return st2:state() == "open" end)
    local c2 = srv:last()
    coroutine.close(st2:coroutine())
    assert.equal("closed", (st2:state()))
    -- the connection went with a close frame, 1001 (going away), answered by the server
    wsserver.drive(st:coroutine(), srv, ft, function() return c2.gone end)
    assert.equal(1001, (string.unpack(">I2", c2.frames[#c2.frames].payload)))
    s:close()
    assert.equal("closed", (st:state()))
    assert.is_true(coroutine.resume(st:coroutine()))
    assert.equal("dead", coroutine.status(st:coroutine()))
    srv:close()
  end)

  it("hands over nothing more once on_message closed the stream in its 'reconnected' event", function()
    local got, st = {}, nil
    local srv, ft, s, stream = setup{ heartbeat_timeout = 5, on_message = function(m)
      got[#got + 1] = m
      if m.topic == "ibkr" and m.event == "reconnected" then st:close() end
    end }
    st = stream
    local co = st:coroutine()
    srv.on_upgrade = function(conn)
      conn:accept{ greet = true }
      conn:text('{"topic":"sts","args":{"authenticated":true}}')
    end
    wsserver.drive(co, srv, ft, function() return coroutine.status(co) == "dead" end, 20)
    assert.equal("closed", (st:state()))
    local last = got[#got]
    assert.same({ "ibkr", "reconnected" }, { last.topic, last.event })
    assert.equal(1, #only(got, "system"))
    assert.equal(1, #only(got, "sts"))
    srv:close()
    s:close()
  end)

  it("never raises: an on_message that raises goes to on_error", function()
    local errors = {}
    local srv, ft, s, st = setup{ on_message = function() error("boom") end,
      on_error = function(e) errors[#errors + 1] = e end }
    wsserver.drive(st:coroutine(), srv, ft, function() return #errors >= 1 end)
    assert.equal("callback", errors[1].kind)
    assert.equal("on_message", errors[1].callback)
    assert.matches("boom", errors[1].message)
    st:close()
    srv:close()
    s:close()
  end)
end)

describe("s:stream options", function()
  it("refuses what makes no sense at the caller's line", function()
    local s = ibkr.new{ base_url = "http://127.0.0.1:9/v1/api" }
    local function line_of(f)
      local ok, e = pcall(f)
      assert.is_false(ok)
      return e
    end
    local line = debug.getinfo(1, "l").currentline + 1
    local e = line_of(function() s:stream{ topic = {} } end)
    local want = "stream_spec.lua:" .. line
      .. ": s:stream: unknown option 'topic' %(did you mean 'topics'%?%)"
    assert.matches(want, e)
    assert.matches("tic_interval", line_of(function() s:stream{ tic_interval = 60 } end))
    assert.matches("heartbeat_timeout", line_of(function() s:stream{ heartbeat_timeout = 0 } end))
    assert.matches("topics%[2%]", line_of(function() s:stream{ topics = { "a", 3 } } end))
    assert.matches("max_message", line_of(function() s:stream{ max_message = 1.5 } end))
    s:close()
  end)

  it("checks keepalive{ push = ... } with the same rules, at the caller's line", function()
    local s = ibkr.new{ base_url = "http://127.0.0.1:9/v1/api" }
    local function raised(f)
      local line = debug.getinfo(2, "l").currentline
      local ok, e = pcall(f)
      assert.is_false(ok)
      assert.matches("^[^:]*stream_spec.lua:" .. line .. ": ", e)
      return e
    end
    assert.matches("s:keepalive: option 'push' must be a boolean or a table of s:stream's options %(got 1%)",
      raised(function() s:keepalive{ push = 1 } end))
    assert.matches("s:keepalive: option 'push': option 'tic_interval' must be a number > 0 and < 60",
      raised(function() s:keepalive{ push = { tic_interval = 90 } } end))
    assert.matches("s:keepalive: option 'push': unknown option 'topic' %(did you mean 'topics'%?%)",
      raised(function() s:keepalive_loop{ push = { topic = {} } } end))
    assert.is_true(coroutine.close(s:keepalive{ push = { topics = { "sor+{}" } } }))
    s:close()
  end)

  it("derives IBKR's unsubscribe messages", function()
    local stream = require("ibkr.stream")
    assert.equal("umd+265598+{}", stream.unsubscribe_message('smd+265598+{"fields":["31"]}'))
    assert.equal("uor+{}", stream.unsubscribe_message("sor+{}"))
    assert.is_nil(stream.unsubscribe_message("tic"))
  end)
end)
