-- The second value of a successful call: meta = { status =, headers = } with the final
-- response's header names lower-cased (repeated fields joined with ", ", set-cookie a list), on
-- every session call, blocking and cooperative; and what the core hands over for it (the header
-- block and the body's size). Against the mock gateway, whose `headers` fault sets the answer's
-- headers (a list of values sends one line each).
local core = require("ibkr.core")
local mock = require("spec.helpers.mock")

-- f() in a coroutine resumed until it ends (cooperative sessions yield while in flight), or
-- directly
local function call_in(coop, f)
  if not coop then return f() end
  local co = coroutine.create(f)
  while true do
    local r = table.pack(coroutine.resume(co))
    assert(r[1], r[2])
    if coroutine.status(co) == "dead" then return table.unpack(r, 2, r.n) end
    core.sleep(math.min(type(r[2]) == "number" and r[2] or 0.001, 0.01))
  end
end

local CALLS = {
  { "auth_status", "/iserver/auth/status", function(s) return s:auth_status() end },
  { "tickle", "/tickle", function(s) return s:tickle() end },
  { "sso_validate", "/sso/validate", function(s) return s:sso_validate() end },
  { "reauthenticate", "/iserver/reauthenticate", function(s) return s:reauthenticate() end },
  { "init_brokerage", "/iserver/auth/ssodh/init", function(s) return s:init_brokerage{ compete = true } end },
  { "request", "/tickle", function(s) return s:request("POST", "/tickle", { timeout = 5 }) end },
  { "logout", "/logout", function(s) return s:logout() end },
}

describe("meta, the second value of a successful call", function()
  local m
  setup(function() m = assert(mock.start{ tls = false, pacing = false, init_delay = 0 }) end)
  teardown(function() m:stop() end)
  before_each(function() m:reset() end)

  for _, coop in ipairs{ false, true } do
    local how = coop and "cooperative" or "blocking"

    it(how .. ": every session call returns the table and { status, headers }, names lower-cased", function()
      local s = m:session{ cooperative = coop }
      for _, c in ipairs(CALLS) do
        m:fault{ path = c[2], kind = "delay", seconds = 0, count = 1,
          headers = { ["X-Call-Name"] = c[1], ["X-Request-ID"] = "id-" .. c[1] } }
        local res, meta = call_in(coop, function() return c[3](s) end)
        assert.is_table(res, c[1] .. ": " .. tostring(meta))
        assert.equal(200, meta.status, c[1])
        assert.equal("application/json", meta.headers["content-type"], c[1])
        assert.equal(c[1], meta.headers["x-call-name"], c[1])
        assert.equal("id-" .. c[1], meta.headers["x-request-id"], c[1])
        assert.is_nil(meta.headers["Content-Type"])
        for name in pairs(meta.headers) do assert.equal(name:lower(), name) end
      end
      s:close()
    end)

    it(how .. ": repeated fields are joined with \", \"; set-cookie is a list of its lines", function()
      m:fault{ path = "/tickle", kind = "delay", seconds = 0, headers = {
        ["X-Repeat"] = { "a", "b", "c" }, ["Set-Cookie"] = { "x=1; Path=/; HttpOnly", "y=2, z" },
        ["Vary"] = { "Accept", "Accept-Encoding" }, ["X-Once"] = "only" } }
      m:fault{ path = "/iserver/auth/status", kind = "delay", seconds = 0,
        headers = { ["Set-Cookie"] = "single=1" } }
      local s = m:session{ cooperative = coop }
      local _, meta = call_in(coop, function() return s:tickle() end)
      assert.equal("a, b, c", meta.headers["x-repeat"])
      assert.equal("Accept, Accept-Encoding", meta.headers.vary)
      assert.equal("only", meta.headers["x-once"])
      assert.same({ "x=1; Path=/; HttpOnly", "y=2, z" }, meta.headers["set-cookie"])
      local _, meta2 = call_in(coop, function() return s:auth_status() end)
      assert.same({ "single=1" }, meta2.headers["set-cookie"]) -- a list even for one line
      s:close()
    end)

    it(how .. ": an empty 2xx answer (204) gives {} and its own status", function()
      m:fault{ path = "/tickle", kind = "status", status = 204, body = "", content_type = "" }
      local s = m:session{ cooperative = coop }
      local res, meta = call_in(coop, function() return s:tickle() end)
      assert.same({}, res)
      assert.equal(204, meta.status)
      assert.is_table(meta.headers)
      s:close()
    end)
  end

  it("holds status and headers only, built on first use and kept", function()
    local s = m:session{}
    local _, meta = s:tickle()
    local keys = {}
    for k in pairs(meta) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.same({ "headers", "status" }, keys)
    assert.equal(meta.headers, meta.headers)
    local _, meta2 = s:tickle()
    assert.is_table(rawget(meta2, "headers") == nil and meta2.headers) -- not built until asked
    assert.is_nil(meta2.other)
    s:close()
  end)

  it("failures are still nil, err (no meta)", function()
    m:fault{ path = "/tickle", kind = "status", status = 404 }
    local s = m:session{ retries = 0 }
    local res, err = s:tickle()
    assert.is_nil(res)
    assert.is_true(core.is_error(err))
    assert.equal(404, err.status)
    s:close()
  end)
end)

describe("the core hands over the final response's header block and body size", function()
  local m
  setup(function() m = assert(mock.start{ tls = false, pacing = false }) end)
  teardown(function() m:stop() end)

  it("s:perform and req:result: res, nil, status, head, bytes", function()
    local cs = core.new{ base_url = m.url }
    local res, err, status, head, bytes = cs:perform("POST", "/tickle")
    assert.is_table(res, tostring(err))
    assert.equal(200, status)
    assert.matches("^HTTP/1%.1 200 [^\r\n]*\r\n", head)
    assert.matches("\r\n\r\n$", head)
    local h = core.parse_headers(head)
    assert.equal(tostring(bytes), h["content-length"])
    local req = assert(cs:start("GET", "/sso/validate"))
    assert.is_true(req:wait(10))
    local r2, e2, st2, head2, bytes2 = req:result()
    assert.is_table(r2, tostring(e2))
    assert.equal(200, st2)
    assert.equal(tostring(bytes2), core.parse_headers(head2)["content-length"])
    assert.equal(head2, select(4, req:result())) -- cached with the result
    req:close()
    cs:close()
  end)
end)

describe("core.parse_headers", function()
  it("reads a header block as libcurl hands it over", function()
    local h = core.parse_headers("HTTP/1.1 200 OK\r\nContent-Type:  application/json \r\n"
      .. "X-A: one\r\nx-a: two\r\n\tfolded on\r\nSet-Cookie: a=1\r\nSET-COOKIE: b=2\r\n more\r\n"
      .. "no colon here\r\nBad Name: x\r\n: empty name\r\nEmpty:\r\n\r\nAfter-The-End: x\r\n")
    assert.same({
      ["content-type"] = "application/json",
      ["x-a"] = "one, two folded on",
      ["set-cookie"] = { "a=1", "b=2 more" },
      empty = "",
    }, h)
  end)

  it("takes bare LF line ends, no status line, an empty block", function()
    assert.same({ a = "1", b = "2" }, core.parse_headers("A: 1\nB: 2\n"))
    assert.same({}, core.parse_headers(""))
    assert.same({}, core.parse_headers("HTTP/1.1 204 No Content\r\n\r\n"))
  end)
end)
