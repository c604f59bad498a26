-- Pacing (429) and every fault injection of the mock gateway, over HTTP and HTTPS.
local cjson = require("cjson")
local socket = require("socket")
local mock = require("spec.helpers.mock")

local decode = mock.json

for _, tls in ipairs({ false, true }) do
  local scheme = tls and "https" or "http"

  describe("mock gateway pacing over " .. scheme, function()
    local m, c

    setup(function()
      -- (before_each's connection may wait long for its first request on a loaded machine)
      m = assert(mock.start({ tls = tls, head_timeout = 60 }))
    end)

    teardown(function()
      m:stop()
    end)

    before_each(function()
      m:reset()
      c = assert(m:connect())
    end)

    after_each(function()
      c:close()
    end)

    local function api(method, path)
      return assert(c:request(method, "/v1/api" .. path))
    end

    it("is on by default", function()
      assert.is_true(m:state().config.pacing)
    end)

    it("allows one /tickle per second, then 429 with a JSON error and Retry-After", function()
      assert.equals(200, api("POST", "/tickle").status)
      local r = api("POST", "/tickle")
      assert.equals(429, r.status)
      assert.equals("1", r.headers["retry-after"])
      assert.equals("application/json", r.headers["content-type"])
      assert.matches("/tickle", decode(r.body).error, 1, true)
      -- GET /tickle shares the limit
      assert.equals(429, api("GET", "/tickle").status)
      -- another endpoint is not affected by the tickle limit
      assert.equals(200, api("POST", "/iserver/auth/status").status)
      assert.equals(2, m:state().counters.rate_limited)
    end)

    it("admits /tickle again once the second is over (rejected calls do not use the window)", function()
      assert.equals(200, api("POST", "/tickle").status)
      local t0 = socket.gettime()
      local status
      repeat
        status = api("POST", "/tickle").status
        socket.sleep(0.02) -- the client's retry cadence
      until status == 200 or socket.gettime() - t0 > 10
      assert.equals(200, status)
      -- by the mock's own clock (its request log): the next tickle admitted is the first one a
      -- second after the first, however many were refused in between (ms: the log's clock and
      -- the pacer's are read a moment apart)
      local log, ms = m:api_log("/tickle"), 0.005
      local first, last = log[1], log[#log]
      assert.same({ 200, 200 }, { first.status, last.status })
      assert.is_true(last.time - first.time >= 1 - ms)
      for i = 2, #log - 1 do
        assert.equals(429, log[i].status)
        assert.is_true(log[i].time - first.time < 1 + ms, "refused after the second was over")
      end
    end)

    it("allows one /sso/validate per minute", function()
      assert.equals(200, api("GET", "/sso/validate").status)
      local r = api("GET", "/sso/validate")
      assert.equals(429, r.status)
      local ra = tonumber(r.headers["retry-after"])
      assert.is_true(ra >= 59 and ra <= 60, "Retry-After " .. tostring(ra))
    end)

    it("allows 10 requests per second overall", function()
      local statuses = {}
      for i = 1, 11 do
        statuses[i] = api("POST", "/iserver/auth/status").status
      end
      for i = 1, 10 do
        assert.equals(200, statuses[i], "request " .. i)
      end
      assert.equals(429, statuses[11])
    end)

    it("can be switched off with /__mock/config", function()
      m:config({ pacing = false })
      for _ = 1, 30 do
        assert.equals(200, api("POST", "/tickle").status)
      end
      assert.equals(0, m:state().counters.rate_limited)
    end)

    it("never paces or logs control requests", function()
      for _ = 1, 30 do
        m:state()
      end
      assert.equals(200, api("POST", "/tickle").status)
      assert.equals(1, #m:log())
    end)
  end)

  describe("mock gateway faults over " .. scheme, function()
    local m, c

    setup(function()
      m = assert(mock.start({ tls = tls, pacing = false, head_timeout = 60 }))
    end)

    teardown(function()
      m:stop()
    end)

    before_each(function()
      m:reset()
      m:config({ pacing = false })
      c = assert(m:connect())
    end)

    after_each(function()
      c:close()
    end)

    local function tickle()
      return c:request("POST", "/v1/api/tickle")
    end

    it("delay: waits before the head, then answers normally", function()
      m:fault({ path = "/tickle", kind = "delay", seconds = 0.3 })
      local t0 = socket.gettime()
      local r = assert(tickle())
      assert.is_true(socket.gettime() - t0 >= 0.3)
      assert.equals(200, r.status)
      assert.is_string(decode(r.body).session)
      assert.equals(200, assert(tickle()).status)
      local log = m:api_log("/tickle")
      assert.same({ "delay", nil }, { log[1].fault, log[2].fault }) -- the next one is not delayed
    end)

    it("delay_body: sends the head and half the body, pauses, then the rest", function()
      m:fault({ path = "/tickle", kind = "delay_body", seconds = 1.5 })
      local t0 = socket.gettime()
      assert(c:send("POST /v1/api/tickle HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
      local line = assert(c.sock:receive("*l"))
      assert.equals("HTTP/1.1 200 OK", line)
      local rest = {}
      repeat
        local l = assert(c.sock:receive("*l"))
        rest[#rest + 1] = l
      until l == ""
      local len
      for _, l in ipairs(rest) do
        len = len or tonumber(l:match("^Content%-Length: (%d+)$"))
      end
      local half = assert(c.sock:receive(len // 2))
      -- the head and the first half came; the rest is 1.5 s away (a non-blocking read finds none)
      c.sock:settimeout(0)
      local got, err, partial = c.sock:receive(len - #half)
      assert.same({ nil, "" }, { got, partial })
      assert.is_truthy(err == "timeout" or err == "wantread", err)
      c.sock:settimeout(5)
      local body = half .. assert(c.sock:receive(len - #half))
      assert.is_true(socket.gettime() - t0 >= 1.5)
      assert.is_string(decode(body).session)
    end)

    it("status: answers with the given status, body and headers", function()
      m:fault({ path = "/tickle", kind = "status", status = 503, body = '{"error":"busy"}',
        headers = { ["Retry-After"] = "7", ["X-Extra"] = "1" } })
      local r = assert(tickle())
      assert.equals(503, r.status)
      assert.equals('{"error":"busy"}', r.body)
      assert.equals("7", r.headers["retry-after"])
      assert.equals("1", r.headers["x-extra"])
      assert.equals("application/json", r.headers["content-type"])
      assert.equals(200, assert(tickle()).status)
    end)

    it("status: defaults to a JSON error body, and takes a content type", function()
      m:fault({ path = "/tickle", kind = "status", status = 410 })
      local r = assert(tickle())
      assert.equals(410, r.status)
      assert.same({ error = "Gone" }, decode(r.body))
      m:fault({ path = "/tickle", kind = "status", status = 500, body = "oops", content_type = "text/plain" })
      r = assert(tickle())
      assert.equals("oops", r.body)
      assert.equals("text/plain", r.headers["content-type"])
    end)

    it("drop before: closes the connection without answering", function()
      m:fault({ path = "/tickle", kind = "drop", when = "before" })
      local r, err = tickle()
      assert.is_nil(r)
      assert.equals("closed", err)
    end)

    it("drop mid: sends the head and half the promised body, then closes", function()
      m:fault({ path = "/tickle", kind = "drop", when = "mid" })
      local r, err, partial, head = tickle()
      assert.is_nil(r)
      assert.equals("closed", err)
      assert.equals(200, head.status)
      local promised = tonumber(head.headers["content-length"])
      assert.is_true(#partial > 0 and #partial < promised)
      assert.equals(math.floor(promised / 2), #partial)
    end)

    it("malformed: 200 with a body that is not JSON", function()
      m:fault({ path = "/tickle", kind = "malformed" })
      local r = assert(tickle())
      assert.equals(200, r.status)
      assert.equals("application/json", r.headers["content-type"])
      assert.is_false(pcall(cjson.decode, r.body))
    end)

    it("truncated: 200 whose JSON is cut short, with a matching Content-Length", function()
      local full = assert(tickle()).body
      m:fault({ path = "/tickle", kind = "truncated" })
      local r = assert(tickle())
      assert.equals(200, r.status)
      assert.equals(#r.body, tonumber(r.headers["content-length"]))
      assert.is_true(#r.body > 0 and #r.body < #full)
      assert.equals(full:sub(1, 30), r.body:sub(1, 30))
      assert.is_false(pcall(cjson.decode, r.body))
    end)

    it("html: 200 with an HTML page", function()
      m:fault({ path = "/tickle", kind = "html" })
      local r = assert(tickle())
      assert.equals(200, r.status)
      assert.matches("^text/html", r.headers["content-type"])
      assert.matches("<html>", r.body, 1, true)
    end)

    it("empty: 200 with an empty body", function()
      m:fault({ path = "/tickle", kind = "empty" })
      local r = assert(tickle())
      assert.equals(200, r.status)
      assert.equals("0", r.headers["content-length"])
      assert.equals("", r.body)
    end)

    it("huge: streams a JSON body of exactly the asked size", function()
      local size = 3 * 1024 * 1024 + 7
      m:fault({ path = "/tickle", kind = "huge", bytes = size })
      local r = assert(tickle())
      assert.equals(200, r.status)
      assert.equals(size, tonumber(r.headers["content-length"]))
      assert.equals(size, #r.body)
      assert.equals(size - 11, #decode(r.body).data)
      assert.equals(200, assert(tickle()).status) -- connection still usable
    end)

    it("redirect: 302 with a Location by default, or the given status and location", function()
      m:fault({ path = "/tickle", kind = "redirect" })
      local r = assert(tickle())
      assert.equals(302, r.status)
      assert.equals(m.root .. "/sso/Login?forwardTo=22&RL=1&ip2loc=on", r.headers.location)
      m:fault({ path = "/tickle", kind = "redirect", status = 307, location = "https://example.invalid/x" })
      r = assert(tickle())
      assert.equals(307, r.status)
      assert.equals("https://example.invalid/x", r.headers.location)
    end)

    it("deep: JSON nested to the given depth", function()
      m:fault({ path = "/tickle", kind = "deep", depth = 5000 })
      local r = assert(tickle())
      assert.equals(10000, #r.body)
      assert.equals(string.rep("[", 5000) .. string.rep("]", 5000), r.body)
    end)

    it("invalid_utf8: a JSON string with invalid UTF-8 bytes", function()
      m:fault({ path = "/tickle", kind = "invalid_utf8" })
      local r = assert(tickle())
      assert.equals(200, r.status)
      assert.truthy(r.body:find("\255", 1, true))
      assert.is_false(utf8.len(r.body) and true or false)
    end)

    it("chunked: the normal body with Transfer-Encoding: chunked", function()
      m:fault({ path = "/tickle", kind = "chunked" })
      local r = assert(tickle())
      assert.equals("chunked", r.headers["transfer-encoding"])
      assert.is_nil(r.headers["content-length"])
      assert.is_true(r.chunks >= 2)
      assert.is_string(decode(r.body).session)
      assert.equals(200, assert(tickle()).status)
    end)

    it("gzip: the normal body gzip-encoded with Content-Encoding: gzip", function()
      m:fault({ path = "/iserver/auth/status", kind = "gzip" })
      local r = assert(c:request("POST", "/v1/api/iserver/auth/status"))
      assert.equals("gzip", r.headers["content-encoding"])
      assert.equals(#r.body, tonumber(r.headers["content-length"]))
      local tmp = os.tmpname()
      local f = assert(io.open(tmp, "wb"))
      f:write(r.body)
      f:close()
      local p = assert(io.popen("gzip -dc < " .. tmp))
      local plain = p:read("a")
      assert.is_true(p:close())
      os.remove(tmp)
      assert.is_true(decode(plain).authenticated)
    end)

    it("error_body: 200 with {error: ...}", function()
      m:fault({ path = "/tickle", kind = "error_body", error = "no session" })
      local r = assert(tickle())
      assert.equals(200, r.status)
      assert.same({ error = "no session" }, decode(r.body))
      m:fault({ path = "/tickle", kind = "error_body" })
      assert.same({ error = "failed to process request" }, decode(assert(tickle()).body))
    end)

    it("html: takes a status and a title (the CDN's 403 Access Denied page)", function()
      m:fault({ path = "/tickle", kind = "html", status = 403, title = "Access Denied" })
      local r = assert(tickle())
      assert.equals(403, r.status)
      assert.matches("^text/html", r.headers["content-type"])
      assert.matches("<title>Access Denied</title>", r.body, 1, true)
    end)

    it("redirect: to /sso/Dispatcher, relative, as the gateway's login loop does", function()
      m:fault({ path = "/iserver/auth/status", kind = "redirect", location = "/sso/Dispatcher" })
      local r = assert(c:request("POST", "/v1/api/iserver/auth/status"))
      assert.equals(302, r.status)
      assert.equals("/sso/Dispatcher", r.headers.location)
    end)

    it("error_body: takes another status", function()
      m:fault({ path = "/tickle", kind = "error_body", status = 202, error = "later" })
      local r = assert(tickle())
      assert.equals(202, r.status)
      assert.same({ error = "later" }, decode(r.body))
    end)

    it("modifiers on any kind: delay, chunked, close and headers (503 after a wait, empty chunked body)",
      function()
      m:fault({ path = "/tickle", kind = "status", status = 503, body = "", delay = 0.3, chunked = true,
        close = true, headers = { ["x-response-time"] = "300ms" } })
      local t0 = socket.gettime()
      local r = assert(tickle())
      assert.is_true(socket.gettime() - t0 >= 0.3)
      assert.equals(503, r.status)
      assert.equals("chunked", r.headers["transfer-encoding"])
      assert.equals(0, r.chunks)
      assert.equals("", r.body)
      assert.equals("close", r.headers.connection)
      assert.equals("300ms", r.headers["x-response-time"])
      assert.is_true((c:is_closed(2)))
    end)

    it("backend_timeout: the gateway's 503 with an empty chunked body and Connection: close", function()
      m:fault({ path = "/tickle", kind = "backend_timeout", seconds = 0.3 })
      local t0 = socket.gettime()
      local r = assert(tickle())
      assert.is_true(socket.gettime() - t0 >= 0.3)
      assert.equals(503, r.status)
      assert.equals("chunked", r.headers["transfer-encoding"])
      assert.equals("", r.body)
      assert.is_nil(r.headers["content-type"])
      assert.equals("close", r.headers.connection)
      assert.equals("300ms", r.headers["x-response-time"])
      assert.is_true((c:is_closed(2)))
    end)

    it("headers replace the answer's own (a Content-Type, a Retry-After)", function()
      m:fault({ path = "/tickle", kind = "empty", headers = { ["Content-Type"] = "text/plain",
        ["Retry-After"] = 3 } })
      local r = assert(tickle())
      assert.equals("text/plain", r.headers["content-type"])
      assert.equals("3", r.headers["retry-after"])
    end)

    it("after: lets that many matching requests pass, then drops the next connection unanswered",
      function()
      m:fault({ path = "/tickle", kind = "drop", after = 2 })
      assert.equals(200, assert(tickle()).status)
      assert.equals(200, assert(c:request("POST", "/v1/api/iserver/auth/status")).status)
      assert.equals(200, assert(tickle()).status)
      local r, err = tickle()
      assert.is_nil(r)
      assert.equals("closed", err)
      c = assert(m:connect())
      assert.equals(200, assert(tickle()).status)
      assert.same({}, m:faults())
    end)

    it("after: a fault still waiting does not hide the faults behind it", function()
      m:fault({ path = "/tickle", kind = "status", status = 502, after = 1 })
      m:fault({ path = "/tickle", kind = "status", status = 500 })
      assert.equals(500, assert(tickle()).status)
      assert.equals(502, assert(tickle()).status)
      assert.equals(200, assert(tickle()).status)
    end)

    it("config connection_close: every API answer says Connection: close and closes", function()
      m:config({ connection_close = true })
      local r = assert(tickle())
      assert.equals(200, r.status)
      assert.equals("close", r.headers.connection)
      assert.is_true((c:is_closed(2)))
      m:config({ connection_close = false })
      c = assert(m:connect())
      assert.is_nil(assert(tickle()).headers.connection)
      assert.equals(200, assert(tickle()).status)
    end)

    it("penalty box: every endpoint 429 Too many requests with Retry-After, each hit extending it",
      function()
      local box = m:control("POST", "/__mock/penalty", { seconds = 2, retry_after = 600 }).penalty
      assert.equals(600, box.retry_after)
      assert.is_true(box["in"] > 1.5 and box["in"] <= 2)
      m:fault({ path = "/tickle", kind = "empty" })
      local paths = { "/tickle", "/sso/validate", "/iserver/auth/status", "/tickle", "/logout",
        "/iserver/accounts", "/tickle" }
      for _, path in ipairs(paths) do
        local method = (path == "/sso/validate" or path == "/iserver/accounts") and "GET" or "POST"
        local r = assert(c:request(method, "/v1/api" .. path))
        assert.equals(429, r.status, path)
        assert.same({ error = "Too many requests" }, decode(r.body))
        assert.equals("600", r.headers["retry-after"])
        socket.sleep(0.4) -- well inside the box: each hit extends it by 2 s
      end
      -- by the mock's clock: every request was in the box, which outlived its first 2 s
      local log = m:log()
      assert.equals(#paths, #log)
      for _, e in ipairs(log) do assert.is_true(e.penalty) end
      assert.is_true(log[#log].time - log[1].time > 2, "the box was not extended past its first 2 s")
      assert.equals("ready", m:state().state) -- logout never reached the gateway
      assert.equals(1, #m:faults())           -- nor did the fault get used
      socket.sleep(2.1)                       -- past the last hit's 2 s
      assert.equals(cjson.null, m:state().penalty)
      assert.equals(200, assert(tickle()).status)
      assert.equals(#paths, m:state().counters.rate_limited)
    end)

    it("penalty box: extend = false keeps its end; DELETE lifts it", function()
      m:control("POST", "/__mock/penalty", { seconds = 30, extend = false })
      local r = assert(tickle())
      assert.equals(429, r.status)
      assert.equals("30", r.headers["retry-after"])
      assert.equals(1, m:control("GET", "/__mock/penalty").penalty.hits)
      assert.equals(1, m:control("DELETE", "/__mock/penalty").cleared)
      assert.equals(200, assert(tickle()).status)
      m:control("POST", "/__mock/penalty", { seconds = 30 })
      assert.is_table(m:state().penalty)
      m:reset()
      assert.equals(200, assert(tickle()).status)
    end)

    it("refuses a penalty box it cannot run, with 400", function()
      for _, bad in ipairs({ '{"seconds":0}', '{"seconds":"x"}', '{"retry_after":1.5}', '{"extend":1}',
        '{"sconds":5}' }) do
        local r = assert(m:request("POST", "/__mock/penalty", { body = bad }))
        assert.equals(400, r.status, bad)
      end
    end)

    it("refuses a fault that can never match, with a 400 that says why", function()
      local cases = {
        { '{"kind":"empty","path":"/v1/api/tickle"}', 'use "/tickle", not "/v1/api/tickle"' },
        { '{"kind":"empty","path":"/v1/portal/tickle"}', 'use "/tickle"' },
        { '{"kind":"empty","path":"/iserver/auth/ssodh/init?publish=true"}',
          'without its query string: use "/iserver/auth/ssodh/init"' },
        { '{"kind":"empty","paht":"/tickle"}', 'unknown key "paht"' },
        { '{"kind":"empty","seconds":2}', 'unknown key "seconds" for a fault of kind empty' },
        { '{"kind":"empty","method":"GE T"}', "method" },
        { '{"kind":"empty","after":-1}', "after" },
        { '{"kind":"empty","close":"yes"}', "close must be a boolean" },
        { '{"kind":"empty","headers":{"Bad Name":"1"}}', "bad header" },
        { '{"kind":"empty","headers":{"X":"a\r\nb"}}', "bad header" },
      }
      for _, case in ipairs(cases) do
        local r = assert(m:request("POST", "/__mock/fault", { body = case[1] }))
        assert.equals(400, r.status, case[1])
        assert.matches(case[2], decode(r.body).error, 1, true)
      end
      assert.same({}, m:faults())
    end)

    it("applies to the next `count` matching requests only, matching path and method", function()
      m:fault({ path = "/tickle", method = "GET", kind = "status", status = 500, count = 2 })
      assert.equals(200, assert(c:request("POST", "/v1/api/tickle")).status)
      assert.equals(200, assert(c:request("POST", "/v1/api/iserver/auth/status")).status)
      assert.equals(500, assert(c:request("GET", "/v1/api/tickle")).status)
      assert.equals(1, m:faults()[1].count)
      assert.equals(500, assert(c:request("GET", "/v1/api/tickle")).status)
      assert.equals(200, assert(c:request("GET", "/v1/api/tickle")).status)
      assert.same({}, m:faults())
    end)

    it("without a path applies to any API request, in queue order", function()
      m:fault({ kind = "status", status = 501 })
      m:fault({ kind = "status", status = 502 })
      assert.equals(501, assert(c:request("GET", "/v1/api/sso/validate")).status)
      assert.equals(502, assert(c:request("POST", "/v1/api/logout")).status)
      assert.equals("ready", m:state().state) -- replaced responses have no effect
      assert.equals(200, assert(c:request("POST", "/v1/api/tickle")).status)
    end)

    it("a wrapping fault keeps the endpoint's effect (drop mid of logout still logs out)", function()
      m:fault({ path = "/logout", kind = "drop", when = "mid" })
      assert.is_nil((c:request("POST", "/v1/api/logout")))
      assert.equals("no_session", m:state().state)
    end)

    it("lists, adds several at once, and clears faults", function()
      local added = m:fault({ { kind = "delay", seconds = 0 },
        { kind = "empty", path = "/tickle", count = 3 } })
      assert.equals(2, added.pending)
      local list = m:faults()
      assert.equals(2, #list)
      assert.equals("delay", list[1].kind)
      assert.equals(3, list[2].count)
      assert.equals(2, m:clear_faults().cleared)
      assert.same({}, m:faults())
    end)

    it("rejects bad fault descriptions with 400 and adds nothing", function()
      for _, bad in ipairs({ '{"kind":"nope"}', '{"kind":"delay","seconds":"x"}',
        '{"kind":"drop","when":"later"}',
        '{"kind":"status","status":99}', '{"kind":"empty","path":"tickle"}', 'not json',
        '[{"kind":"empty"},{"kind":"bogus"}]' }) do
        local r = assert(m:request("POST", "/__mock/fault", { body = bad }))
        assert.equals(400, r.status, bad)
        assert.is_string(decode(r.body).error)
      end
      assert.same({}, m:faults())
    end)

    it("records the applied fault in the log and counters", function()
      m:fault({ path = "/tickle", kind = "empty" })
      assert(tickle())
      local log = m:log()
      assert.equals("empty", log[1].fault)
      assert.equals(200, log[1].status)
      assert.equals(1, m:state().counters.faults_applied)
    end)

    it("reset clears faults, log, state and config", function()
      m:fault({ kind = "empty" })
      m:set_state("competing")
      m:config({ idle_timeout = 1, pacing = true })
      assert(c:request("POST", "/v1/api/tickle"))
      local st = m:reset()
      assert.equals("ready", st.state)
      assert.equals(0, st.faults)
      assert.equals(0, st.log_size)
      assert.equals(300, st.config.idle_timeout)
      assert.is_false(st.config.pacing) -- the start-up value (--no-pacing)
    end)
  end)
end
