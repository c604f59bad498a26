-- The mock gateway as an HTTP/1.1 server: keep-alive, concurrency, request bodies, the request
-- log, and hostile input (garbage, oversized heads and bodies, slowloris).
local socket = require("socket")
local mock = require("spec.helpers.mock")

local decode = mock.json

for _, tls in ipairs({ false, true }) do
  local scheme = tls and "https" or "http"

  describe("mock gateway HTTP over " .. scheme, function()
    local m

    setup(function()
      m = assert(mock.start({ tls = tls, pacing = false }))
    end)

    teardown(function()
      m:stop()
    end)

    before_each(function()
      m:reset()
    end)

    it("serves many requests on one keep-alive connection", function()
      local c = assert(m:connect())
      for i = 1, 100 do
        local r = assert(c:request(i % 2 == 0 and "POST" or "GET", "/v1/api/iserver/auth/status"))
        assert.equals(200, r.status)
        assert.is_nil(r.headers.connection)
      end
      c:close()
      local log = m:log()
      assert.equals(100, #log)
      for _, e in ipairs(log) do
        assert.equals(log[1].conn, e.conn)
      end
    end)

    it("answers pipelined requests in order", function()
      local c = assert(m:connect())
      assert(c:send("POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "GET /v1/api/sso/validate HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "POST /v1/api/logout HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
      assert.is_string(decode(assert(c:read_response()).body).session)
      assert.is_true(decode(assert(c:read_response()).body).RESULT)
      assert.same({ status = true }, decode(assert(c:read_response()).body))
      c:close()
    end)

    it("closes after Connection: close and after an HTTP/1.0 request", function()
      local c = assert(m:connect())
      local r = assert(c:request("POST", "/v1/api/tickle", { close = true }))
      assert.equals("close", r.headers.connection)
      assert.is_true(c:is_closed())
      c:close()
      c = assert(m:connect())
      assert(c:send("GET /v1/api/sso/validate HTTP/1.0\r\n\r\n"))
      r = assert(c:read_response())
      assert.equals(200, r.status)
      assert.equals("close", r.headers.connection)
      assert.is_true(c:is_closed())
      c:close()
    end)

    it("keeps an HTTP/1.0 connection that asks for keep-alive", function()
      local c = assert(m:connect())
      for _ = 1, 3 do
        assert(c:send("GET /v1/api/sso/validate HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
        local r = assert(c:read_response())
        assert.equals("keep-alive", r.headers.connection)
      end
      c:close()
    end)

    it("serves other connections while one answer is held back", function()
      m:fault({ path = "/tickle", kind = "hold" })
      local slow = assert(m:connect())
      assert(slow:send("POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert.is_true(m:await_held(1))
      for _ = 1, 5 do
        local fast = assert(m:connect())
        assert.equals(200, assert(fast:request("POST", "/v1/api/iserver/auth/status")).status)
        fast:close()
      end
      assert.equals(1, #m:held()) -- all of that while the first answer was still held
      assert.equals(1, m:release())
      local r = assert(slow:read_response())
      assert.equals(200, r.status)
      slow:close()
    end)

    it("handles many concurrent connections", function()
      local conns = {}
      for i = 1, 50 do -- each sends its request at once (a connection idle past the head timeout
        conns[i] = assert(m:connect()) -- is closed), and reads its answer only once all are open
        assert(conns[i]:send("GET /v1/api/__mock/echo?i=" .. i .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
      end
      for i = 50, 1, -1 do
        local r = assert(conns[i]:read_response())
        assert.equals("i=" .. i, decode(r.body).query)
        conns[i]:close()
      end
      assert.equals(50, #m:log())
      local ids = {}
      for _, e in ipairs(m:log()) do
        ids[e.conn] = true
      end
      local n = 0
      for _ in pairs(ids) do
        n = n + 1
      end
      assert.equals(50, n)
    end)

    describe("request log", function()
      it("records a body-less POST with content-length 0 and no content-type", function()
        local c = assert(m:connect())
        assert(c:request("POST", "/v1/api/tickle?x=1&y=2",
          { headers = { ["Content-Length"] = "0", ["User-Agent"] = "spec/1" } }))
        c:close()
        local e = m:log()[1]
        assert.equals(1, e.seq)
        assert.equals("POST", e.method)
        assert.equals("/v1/api/tickle", e.path)
        assert.equals("x=1&y=2", e.query)
        assert.equals("0", e.headers["content-length"])
        assert.is_nil(e.headers["content-type"])
        assert.equals("spec/1", e.headers["user-agent"])
        assert.equals("", e.body)
        assert.equals(tls, e.tls)
        assert.is_number(e.conn)
        assert.equals(200, e.status)
      end)

      it("records a JSON POST's exact body and content type, lowercases and joins headers", function()
        local body = '{"publish":true,"compete":false}'
        local c = assert(m:connect())
        assert(c:request("POST", "/v1/api/iserver/auth/ssodh/init", { body = body,
          headers = { { "Content-Type", "application/json" }, { "X-Dup", "a" }, { "x-dup", "b" } } }))
        c:close()
        local e = m:log()[1]
        assert.equals(body, e.body)
        assert.equals("application/json", e.headers["content-type"])
        assert.equals(tostring(#body), e.headers["content-length"])
        assert.equals("a, b", e.headers["x-dup"])
        assert.equals("", e.query)
      end)

      it("numbers entries in order and clears with DELETE or POST /__mock/log/clear", function()
        local c = assert(m:connect())
        for _ = 1, 3 do
          assert(c:request("GET", "/v1/api/sso/validate"))
        end
        local log = m:log()
        assert.same({ 1, 2, 3 }, { log[1].seq, log[2].seq, log[3].seq })
        assert.equals(3, m:clear_log().cleared)
        assert.same({}, m:log())
        assert(c:request("GET", "/v1/api/sso/validate"))
        assert.equals(1, #m:log())
        assert.equals(200, assert(m:request("POST", "/__mock/log/clear")).status)
        assert.same({}, m:log())
        c:close()
      end)
    end)

    describe("request bodies", function()
      it("reads a chunked request body", function()
        local c = assert(m:connect())
        assert(c:send("POST /v1/api/__mock/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
          .. "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"))
        local r = assert(c:read_response())
        assert.equals("hello, world", decode(r.body).body)
        assert.equals(200, assert(c:request("GET", "/v1/api/sso/validate")).status)
        c:close()
      end)

      it("answers Expect: 100-continue with 100 Continue before the body", function()
        local c = assert(m:connect())
        assert(c:send("POST /v1/api/__mock/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
          .. "Expect: 100-continue\r\n\r\n"))
        local interim = assert(c:read_response({ keep_1xx = true }))
        assert.equals(100, interim.status)
        assert(c:send("abcd"))
        local r = assert(c:read_response())
        assert.equals(200, r.status)
        assert.equals("abcd", decode(r.body).body)
        c:close()
      end)

      it("refuses a body over 1 MiB with 413 and closes", function()
        local c = assert(m:connect())
        assert(c:send("POST /v1/api/__mock/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
          .. string.rep("x", 1000)))
        local r = assert(c:read_response())
        assert.equals(413, r.status)
        assert.equals("close", r.headers.connection)
        c:close()
      end)

      it("refuses an unknown transfer coding with 501", function()
        local c = assert(m:connect())
        assert(c:send("POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"))
        assert.equals(501, assert(c:read_response()).status)
        c:close()
      end)
    end)

    describe("hostile input", function()
      local bystander

      before_each(function()
        bystander = assert(m:connect())
        assert.equals(200, assert(bystander:request("GET", "/v1/api/sso/validate")).status)
      end)

      after_each(function()
        -- the other connection is unharmed and the server still accepts new ones
        assert.equals(200, assert(bystander:request("GET", "/v1/api/sso/validate")).status)
        bystander:close()
        assert.equals("ready", m:state().state)
        assert.equals(0, m:state().counters.connection_errors)
      end)

      local function expect_refusal(bytes, status)
        local c = assert(m:connect())
        assert(c:send(bytes))
        local r = assert(c:read_response())
        assert.equals(status, r.status)
        assert.equals("close", r.headers.connection)
        assert.is_string(decode(r.body).error)
        assert.is_true(c:is_closed())
        c:close()
      end

      it("answers binary garbage with 400 and closes", function()
        expect_refusal("\0\1\2\3garbage\255\254\r\n\r\n", 400)
      end)

      it("answers a malformed request line with 400 and closes", function()
        expect_refusal("GET /v1/api/tickle\r\nHost: x\r\n\r\n", 400)
        expect_refusal("GET /v1/api/tickle HTTP/1.1 extra\r\n\r\n", 400)
      end)

      it("answers a malformed header with 400", function()
        expect_refusal("GET /v1/api/tickle HTTP/1.1\r\nNo colon here\r\n\r\n", 400)
        expect_refusal("GET /v1/api/tickle HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400)
      end)

      it("answers a bad Content-Length with 400", function()
        expect_refusal("POST /v1/api/tickle HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400)
        expect_refusal("POST /v1/api/tickle HTTP/1.1\r\nContent-Length: 1\r\n"
          .. "Transfer-Encoding: chunked\r\n\r\n", 400)
      end)

      it("answers HTTP/2 or other versions with 505", function()
        expect_refusal("GET / HTTP/2.0\r\n\r\n", 505)
      end)

      it("answers a header block over 16 KiB with 431 and closes", function()
        expect_refusal("GET /v1/api/tickle HTTP/1.1\r\nX-Big: " .. string.rep("a", 20000) .. "\r\n\r\n", 431)
      end)

      it("answers an endless header block with 431 before it ends", function()
        local c = assert(m:connect())
        assert(c:send("GET /v1/api/tickle HTTP/1.1\r\n" .. string.rep("X-A: b\r\n", 3000)))
        local r = assert(c:read_response())
        assert.equals(431, r.status)
        c:close()
      end)

      it("closes a slowloris connection after the head timeout with 408", function()
        m:config({ head_timeout = 0.5 }) -- (before_each's reset restores it)
        local c = assert(m:connect())
        local t0 = socket.gettime()
        assert(c:send("GET /v1/api/tickle HTTP/1.1\r\nHost: x\r\n"))
        local r = assert(c:read_response()) -- (the client gives up after 5 s)
        local waited = socket.gettime() - t0
        assert.equals(408, r.status)
        assert.is_true(waited >= 0.4, "closed after " .. waited)
        assert.is_true(c:is_closed())
        c:close()
      end)

      it("closes a connection that never sends anything after the head timeout", function()
        m:config({ head_timeout = 0.5 })
        local c = assert(m:connect())
        local t0 = socket.gettime()
        assert.is_true(c:is_closed(5))
        assert.is_true(socket.gettime() - t0 >= 0.4)
        c:close()
      end)

      it("survives a peer that resets mid-response", function()
        m:fault({ path = "/tickle", kind = "huge", bytes = 8 * 1024 * 1024 })
        local c = assert(m:connect())
        assert(c:send("POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert(c.sock:receive(1000))
        if c.sock.setoption then
          c.sock:setoption("linger", { on = true, timeout = 0 }) -- close with a reset
        end
        c:close()
      end)
    end)
  end)
end

describe("mock gateway TLS", function()
  it("refuses plain HTTP on the TLS port without harm", function()
    local m = assert(mock.start({ tls = true, head_timeout = 0.5 }))
    local c = assert(mock.connect({ host = m.host, port = m.port, tls = false }))
    assert(c:send("GET /v1/api/tickle HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert.is_true(c:is_closed())
    c:close()
    assert.equals("ready", m:state().state)
    m:stop()
  end)

  it("refuses a TLS handshake on the plain port with 400", function()
    local m = assert(mock.start({ tls = false }))
    local c = assert(mock.connect({ host = m.host, port = m.port, tls = false }))
    -- the start of a TLS ClientHello record
    assert(c:send("\22\3\1\2\0\1\0\1\252\3\3" .. string.rep("\0", 32)))
    local r = assert(c:read_response())
    assert.equals(400, r.status)
    c:close()
    local _, err = mock.connect({ host = m.host, port = m.port, tls = true })
    assert.matches("tls handshake", err)
    assert.equals("ready", m:state().state)
    m:stop()
  end)
end)
