-- The push channel against a hostile websocket server (spec/helpers/wsserver.lua, in process):
-- odd upgrades, frames that break RFC 6455, floods, huge announced lengths, silence, hang-ups.
-- Each ends in a clear error and a reconnect (or is handled as the RFC says): nothing raised into
-- the host, no crash, memory bounded.
local ibkr = require("ibkr")
local core = require("ibkr.core")
local clock = require("spec.helpers.clock")
local wsserver = require("spec.helpers.wsserver")

local GREETING = wsserver.GREETING

local function only(got, topic, event)
  local t = {}
  for _, m in ipairs(got) do
    if m.topic == topic and (event == nil or m.event == event) then t[#t + 1] = m end
  end
  return t
end

-- resident memory of this process, in bytes (under AddressSanitizer, whose quarantine keeps freed
-- memory, 0: the bounds are checked without it)
local ASAN = (os.getenv("LD_PRELOAD") or ""):match("asan") ~= nil
local function rss()
  if ASAN then return 0 end
  local f = assert(io.open("/proc/self/statm"))
  local _, res = f:read("n", "n")
  f:close()
  return res * 4096
end

-- A stream whose first connection gets `behave(conn)` instead of an honest upgrade; later ones are
-- honest. Drives until the stream reconnected; returns the "lost" event, the first connection,
-- and what on_message got.
local function lost_then_back(behave, opts)
  opts = opts or {}
  local srv = wsserver.new{ tls = opts.tls }
  local ft = clock.new()
  local s = ibkr.new{ base_url = srv.url, clock = ft.clock }
  local got = {}
  local st = s:stream{ on_message = function(m) got[#got + 1] = m end, max_message = opts.max_message,
    heartbeat_timeout = opts.heartbeat_timeout }
  srv.on_upgrade = function(conn, req)
    if srv.upgrades == 1 then behave(conn, req) else conn:accept{ greet = true } end
  end
  wsserver.drive(st:coroutine(), srv, ft, function() return #only(got, "ibkr", "reconnected") == 1 end, 20)
  assert.equal("open", (st:state()))
  local lost = only(got, "ibkr", "lost")
  assert.equal(1, #lost)
  local first = srv.conns[2] -- (the first is the tickle's)
  st:close()
  srv:close()
  s:close()
  return lost[1], first, got
end

-- the close frame the client sent on conn, as code (or nil)
local function close_code(conn)
  for _, f in ipairs(conn.frames) do
    if f.opcode == 8 then return #f.payload >= 2 and string.unpack(">I2", f.payload) or 0 end
  end
end

describe("push channel, hostile upgrades", function()
  local cases = {
    { "a 200 instead of 101", function(c) c:accept{ status = 200, body = '{"ok":true}' } end,
      "http", "answered 200 to the websocket upgrade, not 101 Switching Protocols %(HTTP 200%)" },
    { "a wrong Sec-WebSocket-Accept", function(c) c:accept{ accept = "AAAAAAAAAAAAAAAAAAAAAAAAAAA=" } end,
      "protocol", "does not match the key sent" },
    { "no Sec-WebSocket-Accept", function(c) c:accept{ accept = false } end,
      "protocol", "has no Sec%-WebSocket%-Accept" },
    { "an extension nobody asked for",
      function(c) c:accept{ headers = { "Sec-WebSocket-Extensions: permessage-deflate" } } end,
      "protocol", "names an extension" },
    { "something that is not HTTP", function(c) c:raw("SSH-2.0-OpenSSH\r\n\r\n") end,
      "protocol", "not HTTP" },
    { "headers without end",
      function(c) c:raw("HTTP/1.1 101 OK\r\n" .. string.rep("X-Pad: 0123456789\r\n", 1200)) end,
      "protocol", "headers are longer than" },
    { "a hang-up before any answer", function(c) c:hangup() end,
      "protocol", "closed without an answer to the upgrade" },
  }
  for _, case in ipairs(cases) do
    it("gets a clear error and reconnects: " .. case[1], function()
      local lost = lost_then_back(case[2])
      assert.equal(case[3], lost.error.kind)
      assert.matches(case[4], lost.error.message)
      assert.equal("/ws", lost.error.path)
    end)
  end

  it("keeps the status and body of a refused upgrade", function()
    local lost = lost_then_back(function(c)
      c:accept{ status = 401, body = '{"error":"not authenticated"}' }
    end)
    assert.equal("http", lost.error.kind)
    assert.equal(401, lost.error.status)
    assert.equal("not authenticated", lost.error.data.error)
  end)
end)

describe("push channel, hostile frames", function()
  local cases = {
    { "a masked server frame", function(c) c:accept(); c:text(GREETING, { mask = "abcd" }) end,
      "protocol", "RFC 6455", 1002 },
    { "invalid UTF-8 in a text frame", function(c) c:accept(); c:text('{"x":"\xff\xfe"}') end,
      "protocol", "not UTF%-8", 1007 },
    { "a new message inside a fragmented one",
      function(c) c:accept(); c:text('{"a":', { fin = false }); c:text('{"b":1}') end,
      "protocol", "RFC 6455", 1002 },
    { "a continuation without a start", function(c) c:accept(); c:frame(0, "x") end,
      "protocol", "RFC 6455", 1002 },
    { "reserved bits", function(c) c:accept(); c:text("{}", { rsv = 4 }) end,
      "protocol", "RFC 6455", 1002 },
    { "an unknown opcode", function(c) c:accept(); c:frame(3, "x") end,
      "protocol", "RFC 6455", 1002 },
    { "a control frame longer than 125 bytes", function(c) c:accept(); c:ping(string.rep("p", 126)) end,
      "protocol", "malformed", nil },
    { "a fragmented control frame", function(c) c:accept(); c:frame(9, "x", { fin = false }) end,
      "protocol", "malformed", nil },
    { "a 64-bit length with its top bit set",
      function(c) c:accept(); c:raw("\x81\x7f\x80\0\0\0\0\0\0\1x") end,
      "protocol", "malformed", nil },
    { "a close with a code that may not be sent (1005)", function(c) c:accept(); c:close_frame(1005) end,
      "protocol", "RFC 6455", 1002 },
    { "a close with a code below 1000", function(c) c:accept(); c:close_frame(999) end,
      "protocol", "RFC 6455", 1002 },
    { "a close with a one-byte payload", function(c) c:accept(); c:frame(8, "\3") end,
      "protocol", "1%-byte body", nil },
  }
  for _, case in ipairs(cases) do
    it("gets a clear error and reconnects: " .. case[1], function()
      local lost, first = lost_then_back(case[2])
      assert.equal(case[3], lost.error.kind)
      assert.matches(case[4], lost.error.message)
      if case[5] then assert.equal(case[5], close_code(first)) end
    end)
  end

  it("reports a close with an application code and its reason", function()
    local lost, first = lost_then_back(function(c)
      c:accept{ greet = true }
      c:close_frame(4000, "bye now")
    end)
    assert.equal("hangup", lost.error.kind)
    assert.equal(4000, lost.error.close_code)
    assert.matches("code 4000: bye now", lost.error.message)
    assert.equal(4000, close_code(first)) -- echoed, as RFC 6455 asks
  end)

  it("refuses a 100 MB frame header at once, allocating nothing for it", function()
    local before = rss()
    local lost, first = lost_then_back(function(c)
      c:accept{ greet = true }
      c:raw(wsserver.frame(1, string.rep("x", 10), { length = 100 * 1024 * 1024 }))
    end)
    assert.equal("too_large", lost.error.kind)
    assert.matches("max_message %(1048576 bytes%)", lost.error.message)
    assert.equal(1009, close_code(first))
    assert.is_true(rss() - before < 20 * 1024 * 1024, "memory grew by " .. (rss() - before))
  end)

  it("applies max_message to messages made of fragments", function()
    local lost = lost_then_back(function(c)
      c:accept{ greet = true }
      c:text(string.rep("y", 300), { fin = false })
      for _ = 1, 9 do c:frame(0, string.rep("y", 300), { fin = false }) end
    end, { max_message = 1000 })
    assert.equal("too_large", lost.error.kind)
  end)

  it("takes a TLS hang-up in the middle of a frame as a loss", function()
    local lost = lost_then_back(function(c)
      c:accept{ greet = true }
      c:raw(wsserver.frame(1, string.rep("z", 4000)):sub(1, 100))
      c:hangup(true)
    end, { tls = true })
    assert.equal("hangup", lost.error.kind)
    assert.matches("the connection closed without a websocket close", lost.error.message)
    assert.is_nil(lost.error.close_code)
  end)

  it("takes a TCP reset in the middle of a frame as a hang-up, not a protocol error", function()
    local lost = lost_then_back(function(c)
      c:accept{ greet = true }
      c:raw(wsserver.frame(1, string.rep("z", 1000)):sub(1, 500))
      assert(c.sock:setoption("linger", { on = true, timeout = 0 })) -- close(2) sends a reset
      c:hangup()
    end)
    assert.equal("hangup", lost.error.kind)
    assert.matches("the connection was cut without a websocket close %(receiving: .*reset",
      lost.error.message)
    assert.is_nil(lost.error.close_code)
  end)

  it("takes a server that never greets as lost after heartbeat_timeout", function()
    local lost = lost_then_back(function(c) c:accept() end, { heartbeat_timeout = 5 })
    assert.equal("timeout", lost.error.kind)
    assert.matches("nothing from the gateway for 5 s %(no greeting%)", lost.error.message)
  end)

  -- a first connection upgraded, then sent `text` whenever the session's clock moved on a second
  -- or more, never the greeting; later ones honest. Returns the "lost" event and the upgrade count.
  local function talks_but_never_greets(text)
    local srv = wsserver.new()
    local ft = clock.new()
    local s = ibkr.new{ base_url = srv.url, clock = ft.clock }
    local got = {}
    local st = s:stream{ heartbeat_timeout = 5, on_message = function(m) got[#got + 1] = m end }
    local first, beat
    srv.on_upgrade = function(conn)
      if srv.upgrades == 1 then first, beat = conn, ft.t; conn:accept() else conn:accept{ greet = true } end
    end
    local sent = 0
    wsserver.drive(st:coroutine(), srv, ft, function()
      if first and not first.gone and ft.t >= beat + 1 then
        first:text(text)
        sent, beat = sent + 1, ft.t
      end
      return #only(got, "ibkr", "reconnected") == 1
    end, 20)
    assert.equal("open", (st:state()))
    local lost = only(got, "ibkr", "lost")
    assert.equal(1, #lost)
    assert.is_true(sent >= 1, "the server never spoke before the loss")
    st:close()
    srv:close()
    s:close()
    return lost[1]
  end

  for _, case in ipairs{ { "heartbeats", '{"topic":"system","hb":1}' },
    { "\"waiting for session\"", '{"message":"waiting for session"}' },
    { "other topics", '{"topic":"act","args":{}}' } } do
    it("takes a server that sends " .. case[1] .. " but never the greeting as lost after heartbeat_timeout",
      function()
        local lost = talks_but_never_greets(case[2])
        assert.equal("timeout", lost.error.kind)
        assert.matches("no greeting within 5 s of the upgrade", lost.error.message)
        assert.equal(5, lost.error.greeting)
      end)
  end

  it("takes a greeting then silence as lost after heartbeat_timeout", function()
    local lost = lost_then_back(function(c) c:accept{ greet = true } end, { heartbeat_timeout = 5 })
    assert.equal("timeout", lost.error.kind)
    assert.matches("nothing from the gateway for 5 s$", lost.error.message)
  end)
end)

describe("push channel, odd but lawful frames", function()
  -- an open stream of a fresh server; returns srv, ft, s, st, got, conn
  local function open(opts)
    local srv = wsserver.new()
    local ft = clock.new()
    local s = ibkr.new{ base_url = srv.url, clock = ft.clock }
    local got = {}
    opts = opts or {}
    opts.on_message = function(m) got[#got + 1] = m end
    local st = s:stream(opts)
    wsserver.drive(st:coroutine(), srv, ft, function() return st:state() == "open" end)
    return srv, ft, s, st, got, srv:last()
  end

  it("puts fragments together, with control frames between them, answering pings", function()
    local srv, ft, s, st, got, conn = open()
    conn:text('{"topic":"smd",', { fin = false })
    conn:ping("mid")
    conn:frame(0, '"args":', { fin = false })
    conn:frame(10, "unasked pong")
    conn:frame(0, "[1,2,3]}")
    wsserver.drive(st:coroutine(), srv, ft, function() return #got >= 2 end)
    assert.same({ 1, 2, 3 }, got[2].args)
    srv:wait_for(function() return #conn.frames >= 1 end)
    assert.equal(10, conn.frames[1].opcode)
    assert.equal("mid", conn.frames[1].payload)
    st:close()
    srv:close()
    s:close()
  end)

  it("hands over what came before the greeting, writing nothing before it", function()
    local srv = wsserver.new()
    local ft = clock.new()
    local s = ibkr.new{ base_url = srv.url, clock = ft.clock }
    local got = {}
    local st = s:stream{ topics = { "sor+{}" }, on_message = function(m) got[#got + 1] = m end }
    srv.on_upgrade = function(c)
      c:accept()
      c:text('{"topic":"act","args":{"accounts":["U1"]}}')
      c:text('{"topic":"blt","args":[]}')
      c:ping("probe")
    end
    -- (the pong goes out in the step that read the ping; the messages before it may reach
    -- on_message in a later resume when the first one's time slice ran out: wait for both)
    wsserver.drive(st:coroutine(), srv, ft, function()
      return srv:last() and #srv:last().frames >= 1 and #got >= 2
    end)
    assert.equal(10, srv:last().frames[1].opcode)
    assert.same({ "act", "blt" }, { got[1].topic, got[2].topic })
    srv:last():text(GREETING)
    wsserver.drive(st:coroutine(), srv, ft, function() return #srv:last():texts() >= 1 end)
    assert.same({ "sor+{}" }, srv:last():texts())
    st:close()
    srv:close()
    s:close()
  end)

  it("answers a ping flood pong for pong, with bounded memory, and goes on", function()
    local srv, ft, s, st, got, conn = open()
    local before = rss()
    for i = 1, 20000 do conn:ping(tostring(i)) end
    conn:text('{"topic":"after"}')
    wsserver.drive(st:coroutine(), srv, ft, function() return got[#got].topic == "after" end, 60)
    srv:wait_for(function() return #conn.frames >= 20000 end, 60)
    assert.equal("20000", conn.frames[20000].payload)
    assert.equal("open", (st:state()))
    assert.is_true(rss() - before < 30 * 1024 * 1024, "memory grew by " .. (rss() - before))
    st:close()
    srv:close()
    s:close()
  end)

  it("answers a ping flood a bounded number of pings per resume, each resume short", function()
    local srv, _, s, st, got, conn = open()
    local co, ws = st:coroutine(), rawget(st, "_ws")
    local ping = string.rep("p", 125)
    local pong = 2 + 4 + #ping -- a masked client frame of 125 bytes
    for _ = 1, 2000 do conn:ping(ping) end
    conn:text('{"topic":"after"}')
    local most, limit = 0, core.monotonic() + 30 * wsserver.SCALE
    while #conn.frames < 2000 or got[#got].topic ~= "after" do
      assert(core.monotonic() < limit, "the pongs never all came")
      srv:step()
      local before = ws:info().sent
      assert(coroutine.resume(co))
      most = math.max(most, ws:info().sent - before)
    end
    assert.is_true(most <= 32 * pong, "one resume sent " .. most // pong .. " pongs")
    assert.equal(ping, conn.frames[2000].payload)
    assert.equal("open", (st:state()))
    st:close()
    srv:close()
    s:close()
  end)

  it("drops a gateway that floods pings and never reads the pongs", function()
    local srv, ft, s, st, got, conn = open()
    conn.paused = true
    local n = 0
    wsserver.drive(st:coroutine(), srv, ft, function()
      if #only(got, "ibkr", "lost") > 0 then return true end
      if #conn.out < 400 then -- (a flood the server side can keep up: no backlog of its own)
        for _ = 1, 200 do n = n + 1; conn:ping(string.rep("p", 125)) end
      end
      return false
    end, 120)
    local lost = only(got, "ibkr", "lost")[1]
    assert.equal("protocol", lost.error.kind)
    assert.matches("does not read what is sent to it", lost.error.message)
    st:close()
    srv:close()
    s:close()
  end)
end)

describe("a keep-alive holding the channel of a gateway that hangs", function()
  it("takes silence then no REST answer within a second as down", function()
    local srv = wsserver.new()
    local ft = clock.new()
    local s = ibkr.new{ base_url = srv.url, clock = ft.clock }
    local seen = {}
    local co = s:keepalive{ interval = 600, push = { heartbeat_timeout = 5 },
      on_state = function(new, _, detail) seen[#seen + 1] = { new, detail } end }
    wsserver.drive(co, srv, ft, function() return srv:last() and srv:last().upgraded and #seen == 1 end)
    assert.equal("ready", seen[1][1])
    local hung = false
    srv.on_http = function() hung = true; return true end -- reads the tickle, never answers
    wsserver.drive(co, srv, ft, function() return #seen == 2 end, 30)
    assert.is_true(hung)
    assert.equal("down", seen[2][1])
    assert.equal("timeout", seen[2][2].kind)
    s:close()
    srv:close()
  end)
end)
