-- The listener's strict, bounded HTTP/1.x request-head parser (ibkr/cli/http.lua): a pure
-- function of bytes. The listener's behaviour on the wire is in sidecar_listen_spec.lua.
local http = require("ibkr.cli.http")

local function refused(buf)
  local req, status, why = http.parse(buf)
  assert.is_nil(req)
  return status, why
end

describe("the listener's HTTP parser", function()
  it("reads a GET head: method, path, query, version, headers, keep-alive, bytes used", function()
    local buf = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\nX-T: a\r\nx-t: b\r\n\r\nGET /"
    local req, used = http.parse(buf)
    assert.same({ method = "GET", target = "/metrics?x=1", path = "/metrics", query = "x=1",
      version = "HTTP/1.1", keep_alive = true,
      headers = { host = "a", accept = "text/plain", ["x-t"] = "a, b" } }, req)
    assert.equal("GET /", buf:sub(used + 1))
  end)

  it("keeps HTTP/1.1 alive unless Connection: close; HTTP/1.0 only with keep-alive", function()
    local function keep(s) return (http.parse(s)).keep_alive end
    assert.is_false(keep("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n"))
    assert.is_false(keep("GET / HTTP/1.1\r\nHost: a\r\nConnection: te, close\r\n\r\n"))
    assert.is_false(keep("GET / HTTP/1.0\r\n\r\n"))
    assert.is_true(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
  end)

  it("takes the absolute form, '*', and empty lines before the request line", function()
    assert.equal("/readyz", (http.parse("HEAD http://h:9/readyz HTTP/1.1\r\nHost: h\r\n\r\n")).path)
    assert.equal("/", (http.parse("GET http://h HTTP/1.1\r\nHost: h\r\n\r\n")).path)
    assert.equal("*", (http.parse("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")).path)
    local buf = "\r\n\r\nGET /livez HTTP/1.1\r\nHost: h\r\n\r\n"
    local req, used = http.parse(buf)
    assert.equal("/livez", req.path)
    assert.equal(#buf, used)
  end)

  it("waits for more when the head is incomplete but still well formed", function()
    for _, s in ipairs{ "", "G", "GET /metr", "GET /metrics HTTP/1.1\r",
      "GET /metrics HTTP/1.1\r\nHost: a\r\n" } do
      local req, status = http.parse(s)
      assert.is_nil(req)
      assert.is_nil(status, s)
    end
  end)

  it("refuses malformed heads with 400 as soon as they show, complete or not", function()
    for _, s in ipairs{
      "\22\3\1\0\165\1",                                      -- a TLS ClientHello (incomplete)
      "GET /metrics HTTP/1.1\nHost: a\n\n",                     -- bare LF
      "GET /metrics HTTP/1.1\rHost: a",                         -- bare CR (incomplete)
      "GET /met\0rics HTTP/1.1\r\n",                            -- NUL (incomplete)
      "GET  /metrics HTTP/1.1\r\nHost: a\r\n\r\n",              -- two spaces
      "GET /metrics\r\nHost: a\r\n\r\n",                        -- HTTP/0.9
      "GET /metrics HTTP/1.1 x\r\nHost: a\r\n\r\n",
      "G(T /metrics HTTP/1.1\r\nHost: a\r\n\r\n",               -- not a token
      "GET metrics HTTP/1.1\r\nHost: a\r\n\r\n",                -- not a path
      "GET /m#x HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET /\127 HTTP/1.1\r\nHost: a\r\n\r\n",
      "GET /metrics http/1.1\r\nHost: a\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nHost : a\r\n\r\n",              -- space before the colon
      "GET /metrics HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n", -- obs-fold
      "GET /metrics HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nHost: a\r\nX: a\1b\r\n\r\n",    -- control byte in a value
      "GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      "GET /metrics HTTP/1.1\r\n\r\n",                          -- HTTP/1.1 without Host
      "GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
      "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  -- more empty lines than allowed
    } do
      assert.equal(400, (refused(s)), s)
    end
  end)

  it("refuses other HTTP versions with 505", function()
    assert.equal(505, (refused("GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n")))
    assert.equal(505, (refused("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")))
  end)

  it("refuses request bodies: 413 for a Content-Length, 501 for a Transfer-Encoding", function()
    assert.equal(413, (refused("POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")))
    assert.equal(501, (refused("POST /metrics HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")))
    assert.is_table(http.parse("GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"))
  end)

  it("bounds the head, the request line and the number of headers, before the head ends", function()
    -- a long request line is refused as soon as it is longer than any target may be
    local line = "GET /" .. ("a"):rep(http.MAX_TARGET + 100)
    assert.equal(414, (refused(line)))
    assert.equal(414, (refused("GET /" .. ("a"):rep(http.MAX_TARGET) .. " HTTP/1.1\r\nHost: a\r\n\r\n")))
    -- a head that never ends: 431 once it is over MAX_HEAD, whatever comes after
    local head = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " .. ("b"):rep(http.MAX_HEAD)
    assert.equal(431, (refused(head)))
    assert.equal(431, (refused(head .. "\r\n\r\n")))
    local many = "GET / HTTP/1.1\r\nHost: a\r\n" .. ("X: y\r\n"):rep(http.MAX_HEADERS) .. "\r\n"
    assert.equal(431, (refused(many)))
    -- just under the limits is fine
    local fits = "GET / HTTP/1.1\r\nHost: a\r\n" .. ("X: y\r\n"):rep(http.MAX_HEADERS - 1) .. "\r\n"
    assert.is_table(http.parse(fits))
  end)

  it("writes answers with Content-Length and Connection, and HEAD without the body", function()
    assert.equal("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
      .. "Connection: keep-alive\r\n\r\nok\n",
      http.response(200, { { "Content-Type", "text/plain" } }, "ok\n", false, true))
    assert.equal("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
      http.response(503, {}, "no\n", true, false))
  end)
end)
