-- The mock gateway's websocket as an RFC 6455 server: the opening handshake and its refusals,
-- masking, fragmentation, control frames, the closing handshake, UTF-8, its bounds (message size,
-- the queue of a client that never reads), TLS, fairness next to REST clients, and a second
-- opinion from another implementation (Debian's python3-websocket).
local mock = require("spec.helpers.mock")
local raw = require("spec.helpers.raw")
local wsc = require("spec.helpers.ws")
local ws = require("ibkr.mock.net.ws")

local OP = wsc.OP

describe("mock websocket framing (ibkr.mock.net.ws)", function()
  it("answers the handshake key as RFC 6455 section 1.3 shows", function()
    assert.equals("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", ws.accept_key("dGhlIHNhbXBsZSBub25jZQ=="))
  end)

  it("unmasks any length, whatever the alignment", function()
    local key = "\1\2\3\4"
    for n = 0, 40 do
      local data = ("abcdefghij"):rep(5):sub(1, n)
      local masked = wsc.frame(OP.text, data, {}):sub(n < 126 and 3 or 5) -- key .. payload
      assert.equals(data, ws.unmask(masked:sub(5), masked:sub(1, 4)))
      assert.equals(data, ws.unmask(ws.unmask(data, key), key))
    end
  end)
end)

for _, tls in ipairs({ false, true }) do
  describe("mock websocket over " .. (tls and "TLS (wss)" or "TCP (ws)"), function()
    local gw

    setup(function()
      gw = assert(mock.start({ tls = tls, pacing = false, ws_greeting_delay = 0 }))
    end)
    teardown(function()
      gw:stop()
    end)
    before_each(function()
      gw:reset()
    end)

    local function open()
      local c = assert(wsc.connect(gw))
      c:greeting()
      return c
    end

    -- Sends bytes and expects the mock's close frame with code, then the end of the connection.
    local function expect_close(c, code)
      local m = c:until_(function(x) return x.close ~= nil end)
      assert.equals(code, m.close)
      assert.is_true(c:eof())
      return m
    end

    it("switches protocols with the right accept key and headers", function()
      local c = assert(wsc.connect(gw))
      local h = c.response.headers
      assert.equals(101, c.response.status)
      assert.equals("websocket", h.upgrade)
      assert.equals("Upgrade", h.connection)
      assert.is_nil(h["content-length"])
      c:greeting()
      c:close(1000)
    end)

    it("refuses bad handshakes with an HTTP error and closes", function()
      local key = { "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==" }
      local upgrade, conn, version = { "Upgrade", "websocket" }, { "Connection", "keep-alive, Upgrade" },
        { "Sec-WebSocket-Version", "13" }
      local cases = {
        { 426, { conn, version, key } },                                           -- no Upgrade
        { 400, { upgrade, { "Connection", "close" }, version, key } },
        { 426, { upgrade, conn, { "Sec-WebSocket-Version", "8" }, key } },
        { 400, { upgrade, conn, version } },                                      -- no key
        { 400, { upgrade, conn, version, { "Sec-WebSocket-Key", "short==" } } },
        { 400, { upgrade, conn, version, key, key } },                           -- two keys
      }
      for _, case in ipairs(cases) do
        local _, err, resp = wsc.connect(gw, { headers = case[2] })
        assert.equals("refused with " .. case[1], err)
        assert.is_string(mock.json(resp).error)
        assert.equals("close", resp.headers.connection)
      end
      local _, _, resp = wsc.connect(gw, { headers = cases[3][2] })
      assert.equals("13", resp.headers["sec-websocket-version"])
      _, _, resp = wsc.connect(gw, { method = "POST" })
      assert.equals(405, resp.status)
      assert.equals("GET", resp.headers.allow)
      assert.equals(8, gw:ws().counters.refused)
      assert.equals(0, gw:ws().counters.connections)
    end)

    it("closes with 1002 on frames a client may not send", function()
      local cases = {
        wsc.frame(OP.text, "tic", { mask = false }),                    -- unmasked
        wsc.frame(OP.text, "tic", { rsv = 0x40 }),                      -- RSV1 without an extension
        wsc.frame(3, "x"),                                              -- reserved opcode
        wsc.frame(OP.ping, "x", { fin = false }),                       -- fragmented control frame
        wsc.frame(OP.ping, ("x"):rep(126)),                             -- control frame over 125
        wsc.frame(OP.continuation, "x"),                                -- continuation of nothing
        wsc.frame(OP.text, "a", { fin = false }) .. wsc.frame(OP.text, "b"), -- new message inside one
        wsc.frame(OP.close, "\3\238"),                                  -- close code 1006
        wsc.frame(OP.close, "\3"),                                      -- one-byte close payload
      }
      for _, bytes in ipairs(cases) do
        local c = open()
        c:send_raw(bytes)
        expect_close(c, 1002)
      end
      assert.equals(#cases, gw:ws().counters.protocol_errors)
    end)

    it("closes with 1007 on text that is not UTF-8, with 1003 on binary messages", function()
      for _, text in ipairs({ "\255", "\237\160\128", "\192\128" }) do -- byte, surrogate, overlong
        local c = open()
        c:send_text(text)
        expect_close(c, 1007)
      end
      local c = open()
      c:send_frame(OP.text, "\206", { fin = false }) -- a character split over two fragments is fine
      c:send_frame(OP.continuation, "\177")
      gw:ws_wait(function(w) return w.counters.unknown == 1 end)
      c:send_frame(OP.binary, "tic")
      expect_close(c, 1003)
    end)

    it("joins fragments, answering pings in between, and echoes the close", function()
      local c = open()
      c:send_frame(OP.text, "t", { fin = false })
      c:send_frame(OP.ping, "in between")
      c:send_frame(OP.continuation, "i", { fin = false })
      c:send_frame(OP.pong, "unasked") -- allowed, ignored
      c:send_frame(OP.continuation, "c")
      local f = assert(c:read_frame())
      assert.same({ OP.pong, "in between" }, { f.opcode, f.payload })
      assert.equals("tic", c:until_(function(m) return m.topic ~= nil end).topic)
      assert.same({ 4321, "bye" }, { c:close(4321, "bye") })
      local w = gw:ws_wait(function(s) return s.clients == 0 end)
      assert.same({ code = 4321, reason = "bye", how = "peer" },
        { code = w.closed[1].code, reason = w.closed[1].reason, how = w.closed[1].how })
    end)

    it("logs a client's close frame as its close when the client hangs up right after it", function()
      local c = open()
      gw:ws_freeze(true) -- the mock reads the frame and the end together once thawed
      c:send_frame(OP.close, string.pack(">I2", 4100) .. "gone")
      c:shutdown()
      gw:ws_freeze(false)
      local w = gw:ws_wait(function(s) return s.clients == 0 end)
      assert.same({ code = 4100, reason = "gone", how = "peer" },
        { code = w.closed[1].code, reason = w.closed[1].reason, how = w.closed[1].how })
    end)

    it("answers an empty close with an empty close", function()
      local c = open()
      c:send_frame(OP.close, "")
      local f = assert(c:read_frame())
      assert.same({ OP.close, "" }, { f.opcode, f.payload })
      assert.is_true(c:eof())
    end)

    it("closes with 1009 on a frame over ws_max_message (from its header on) or a longer message", function()
      gw:config({ ws_max_message = 1000 })
      local c = open()
      c:send_raw(wsc.frame(OP.text, "", { length = 2 * 1024 * 1024 }):sub(1, 14)) -- header only
      expect_close(c, 1009)
      c = open()
      c:send_text(("x"):rep(1000)) -- at the limit: answered
      assert.equals("Topic unknown 'xxx'", c:until_(function() return true end).error)
      c:send_frame(OP.text, ("x"):rep(600), { fin = false })
      c:send_frame(OP.continuation, ("x"):rep(600))
      expect_close(c, 1009)
    end)

    it("drops a client that never reads before its queue passes ws_max_queue", function()
      gw:config({ ws_max_queue = 300000 })
      local c = open()
      local chunk = ("x"):rep(16384)
      local dropped
      for _ = 1, 400 do -- up to 100 MiB: far more than the kernel's buffers hold
        gw:ws_push(chunk, { ["repeat"] = 16 })
        local w = gw:ws()
        if w.counters.closes.overflow == 1 then
          dropped = true
          break
        end
        assert.is_true(w.connections[1].queued <= 300000)
      end
      assert.is_true(dropped)
      assert.equals(0, gw:ws().clients)
      c:shutdown()
    end)

    it("drops a connection at once on request: no close frame, TLS or not", function()
      local c = open()
      assert.equals(1, gw:ws_drop())
      assert.is_true(c:eof())
      assert.is_nil(c.got_close)
    end)

    it("keeps answering REST clients while a client floods it with frames", function()
      gw:config({ ws_greeting_delay = 3600 }) -- everything the flooder sends is dropped unanswered
      local sid = gw:state().session
      local script = raw.PRELUDE .. [[
        local mock = require("spec.helpers.mock")
        local wsc = require("spec.helpers.ws")
        local gw = { host = "127.0.0.1", port = ]] .. gw.port .. [[, tls = ]] .. tostring(tls) .. [[,
          connect = function(self, o) return mock.connect({ host = self.host, port = self.port,
            tls = self.tls, timeout = o.timeout }) end }
        local c = assert(wsc.connect(gw, { session = "]] .. sid .. [[" }))
        print("open"); io.stdout:flush()
        local frame = wsc.frame(wsc.OP.text, ("f"):rep(60000))
        for _ = 1, 20000 do
          if not c:send_raw(frame) then break end
        end
      ]]
      local p = assert(io.popen("env -u LD_PRELOAD lua5.4 -e " .. raw.q(script) .. " 2>&1", "r"))
      assert.equals("open", p:read("l"))
      local seen = gw:ws_wait(function(w) return w.counters.received > 0 end).counters.received
      for _ = 1, 20 do
        local r = assert(gw:request("POST", "/v1/api/tickle"))
        assert.equals(200, r.status)
      end
      -- the flood goes on after those answers: it was being read all along, and still is
      gw:ws_wait(function(w) return w.counters.received > seen and w.clients == 1 end)
      gw:ws_drop()
      p:close()
    end)
  end)
end

describe("mock websocket with another client (python3-websocket)", function()
  it("handshakes, greets, answers a fragmented tic and a ping, and closes cleanly over TLS", function()
    local gw <close> = assert(mock.start({ ws_greeting_delay = 0 }))
    local script = [[
import json, ssl, sys, websocket
from websocket import ABNF
url, sid = sys.argv[1], sys.argv[2]
c = websocket.create_connection(url, cookie="api=" + json.dumps({"session": sid}),
                                sslopt={"cert_reqs": ssl.CERT_NONE}, timeout=5)
print(json.loads(c.recv())["success"])
print(json.loads(c.recv())["topic"], json.loads(c.recv())["topic"])
c.send_frame(ABNF.create_frame("t", ABNF.OPCODE_TEXT, 0))
c.send_frame(ABNF.create_frame("ic", ABNF.OPCODE_CONT, 1))
print(json.loads(c.recv())["topic"])
c.ping("p")
op, frame = c.recv_data_frame(True)
print(op, frame.data.decode())
c.close(status=1000)
print("closed")
]]
    local p = assert(io.popen("env -u LD_PRELOAD /usr/bin/python3 -c " .. raw.q(script) .. " "
      .. raw.q(gw.ws_url) .. " " .. raw.q(gw:state().session) .. " 2>&1", "r"))
    local out = p:read("a")
    p:close()
    assert.equals("mockuser1\nact sts\ntic\n10 p\nclosed\n", out)
    local w = gw:ws_wait(function(s) return s.clients == 0 end)
    assert.equals("peer", w.closed[1].how)
    assert.equals(1000, w.closed[1].code)
  end)
end)
