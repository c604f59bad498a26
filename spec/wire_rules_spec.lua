-- What goes on the wire is what the caller asked, or a clear refusal: paths are never rewritten,
-- empty header values are sent empty, framing headers are the library's, a loopback gateway in
-- any spelling never goes through a proxy (and only a certain loopback host relaxes certificate
-- checks), credentials never reach an error. A plain TCP listener (luasocket) plays the gateway
-- where the bytes matter.
local core = require("ibkr.core")
local ibkr = require("ibkr")
local socket = require("socket")
local raw = require("spec.helpers.raw")
local mock = require("spec.helpers.mock")

-- Runs `method path` with call options `copts` on a new core session (options `sopts` added to
-- its base_url) against a listener that reads the request and answers `response` (default: 200
-- {}). Returns the request head, its body, and what the request returned (r, err).
local function exchange(sopts, method, path, copts, response)
  local srv = assert(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  local o = { base_url = "http://127.0.0.1:" .. port .. "/v1/api" }
  for k, v in pairs(sopts or {}) do o[k] = v end
  local s = core.new(o)
  local req = assert(s:start(method, path, copts))
  local deadline = core.monotonic() + 10
  local c = raw.accept(srv, req, deadline)
  local data = ""
  local function more()
    assert(core.monotonic() < deadline, "no request")
    req:step()
    local d, err, partial = c:receive(4096)
    data = data .. (d or partial or "")
    if not d and err ~= "closed" then socket.select({ c }, nil, 0.01) end
  end
  while not data:find("\r\n\r\n", 1, true) do more() end
  local head, body = data:match("^(.-\r\n)\r\n(.*)$")
  local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: *(%d+)") or 0)
  while #body < len do
    more()
    body = data:match("\r\n\r\n(.*)$")
  end
  response = response or "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n" ..
    "Connection: close\r\n\r\n{}"
  local r, err = raw.finish(c, srv, req, response, deadline)
  s:close()
  return head, body, r, err
end

-- the header lines of a request head, as a list
local function lines(head)
  local t = {}
  for l in head:gmatch("([^\r\n]*)\r\n") do t[#t + 1] = l end
  return t
end

local function has_line(head, line)
  for _, l in ipairs(lines(head)) do
    if l == line then return true end
  end
  return false
end

describe("wire rules: sent as given, or refused -- never changed", function()
  describe("paths", function()
    it("refuses dot segments, a fragment, spaces, control and non-ASCII bytes; nothing is sent", function()
      local srv = assert(socket.bind("127.0.0.1", 0))
      local _, port = srv:getsockname()
      local s = core.new{ base_url = "http://127.0.0.1:" .. port .. "/v1/api" }
      local cases = {
        ["/../../secret"] = "'.' or '..' segment", ["/a/./b/../c"] = "'.' or '..' segment",
        ["/a/.."] = "'.' or '..' segment", ["/."] = "'.' or '..' segment",
        ["/a/..?x=1"] = "'.' or '..' segment",
        ["/x#frag"] = "percent%-encode it as %%23", ["/x\xc3\xa9"] = "percent%-encode",
        ["/x y"] = "percent%-encode", ["/x\127"] = "percent%-encode", ["/x\255"] = "percent%-encode",
      }
      for path, why in pairs(cases) do
        local ok, msg = pcall(s.perform, s, "GET", path)
        assert.is_false(ok, path)
        assert.truthy(tostring(msg):find(why), path .. ": " .. tostring(msg))
        local ok2 = pcall(s.start, s, "GET", path)
        assert.is_false(ok2, path)
      end
      srv:settimeout(0)
      assert.is_nil(srv:accept(), "a refused path reached the server")
      srv:close()
      s:close()
      -- and through ibkr: the same rule (one copy, in the core)
      local u = ibkr.new{ base_url = "http://127.0.0.1:" .. port .. "/v1/api", pacing = false }
      assert.is_false((pcall(u.request, u, "GET", "/../../secret")))
      u:close()
    end)

    it("sends names that only look like dot segments, and percent-encodings, byte for byte", function()
      for _, path in ipairs{ "/a/.b/..c/...", "/a/%2E%2E/b", "/x%23frag", "/x%C3%A9", "/a//b",
        "/a/b?c=/../d" } do
        local head = exchange(nil, "GET", path)
        assert.are.equal("GET /v1/api" .. path .. " HTTP/1.1", lines(head)[1])
      end
    end)
  end)

  describe("header values", function()
    it("sends an empty value empty, never drops the header (per-call and session headers)", function()
      local head = exchange(nil, "GET", "/x", { headers = { Accept = "" } })
      assert.is_true(has_line(head, "Accept:"), head)
      assert.is_nil(head:find("application/json", 1, true), head)
      head = exchange(nil, "GET", "/x", { headers = { ["X-Empty"] = "" } })
      assert.is_true(has_line(head, "X-Empty:"), head)
      assert.is_true(has_line(head, "Accept: application/json"), head)
      head = exchange({ headers = { ["X-Session"] = "", Accept = "" } }, "POST", "/x", { body = { a = 1 } })
      assert.is_true(has_line(head, "X-Session:"), head)
      assert.is_true(has_line(head, "Accept:"), head)
      assert.is_true(has_line(head, "Content-Type: application/json"), head)
    end)
  end)

  it("sends user_agent = \"\" as an empty User-Agent (a User-Agent is always sent)", function()
    local head = exchange({ user_agent = "" }, "GET", "/x")
    assert.is_true(has_line(head, "User-Agent:"), head)
  end)

  describe("framing and routing headers are the library's", function()
    local names = { "Content-Length", "content-length", "Transfer-Encoding", "Host", "Connection",
      "Keep-Alive", "Proxy-Connection", "Upgrade", "TE", "Trailer", "Expect" }

    it("refuses them per call, naming the header, and sends nothing", function()
      local srv = assert(socket.bind("127.0.0.1", 0))
      local _, port = srv:getsockname()
      local s = core.new{ base_url = "http://127.0.0.1:" .. port .. "/v1/api" }
      for _, name in ipairs(names) do
        local ok, msg = pcall(s.perform, s, "POST", "/x", { headers = { [name] = "0" }, body = "{}" })
        assert.is_false(ok, name)
        assert.truthy(tostring(msg):find("header '" .. name .. "' cannot be set", 1, true), tostring(msg))
      end
      srv:settimeout(0)
      assert.is_nil(srv:accept(), "a refused header reached the server")
      srv:close()
      s:close()
    end)

    it("refuses them as session headers, in core.new and ibkr.new", function()
      for _, name in ipairs(names) do
        local ok, msg = pcall(core.new, { base_url = "http://127.0.0.1:9", headers = { [name] = "x" } })
        assert.is_false(ok, name)
        assert.truthy(tostring(msg):find(name, 1, true), tostring(msg))
        assert.is_false((pcall(ibkr.new, { base_url = "http://127.0.0.1:9", headers = { [name] = "x" } })))
      end
    end)

    it("a body goes with its own length: the next request on the connection is not smuggled", function()
      -- (once: a user Content-Length: 0 made the body the start of the next request)
      local head, body = exchange(nil, "POST", "/x", { body = '{"a":1}' })
      assert.is_true(has_line(head, "Content-Length: 7"), head)
      assert.are.equal('{"a":1}', body)
    end)
  end)

  describe("bodies", function()
    it("sends a top-level ibkr.empty_array as []", function()
      local head, body, r = exchange(nil, "POST", "/x", { body = ibkr.empty_array })
      assert.are.equal("[]", body)
      assert.is_true(has_line(head, "Content-Type: application/json"), head)
      assert.is_table(r)
      assert.are.equal(core.empty_array, ibkr.empty_array)
    end)

    it("still refuses ibkr.null, a number and a function as a body", function()
      local s = core.new{ base_url = "http://127.0.0.1:9" }
      for _, b in ipairs{ core.null, 1, print } do
        local ok, msg = pcall(s.perform, s, "POST", "/x", { body = b })
        assert.is_false(ok)
        assert.truthy(tostring(msg):find("body must be", 1, true), tostring(msg))
      end
      s:close()
    end)
  end)
end)

-- A loopback gateway in any spelling never goes through a proxy from the
-- environment, and it is the same rule that relaxes certificate checks.
local PRELUDE, q = raw.PRELUDE, raw.q

local FIRST_LINE_SERVER = raw.FIRST_LINE_SERVER

describe("a loopback gateway, in every spelling: no proxy, the same certificate rule", function()
  local m
  setup(function() m = assert(mock.start{ pacing = false }) end)
  teardown(function() m:stop() end)

  for _, host in ipairs{ "[::ffff:127.0.0.1]", "[::FFFF:7f00:1]", "127.0.0.1.", "localhost.",
    "[0:0:0:0:0:0:0:1]", "[::1]", "LOCALHOST" } do
    it("never sends " .. host .. " through an environment proxy", function()
      local p, pport = raw.server(FIRST_LINE_SERVER)
      local proxy = "http://127.0.0.1:" .. pport
      local env = "env -u LD_PRELOAD " .. table.concat({ "http_proxy=" .. proxy, "https_proxy=" .. proxy,
        "HTTPS_PROXY=" .. proxy, "ALL_PROXY=" .. proxy, "all_proxy=" .. proxy }, " ")
      local url = m.url:gsub("127%.0%.0%.1", host, 1)
      local script = PRELUDE
        .. "local s = require('ibkr.core').new{ base_url = " .. string.format("%q", url)
        .. ", connect_timeout = 2 }; local r, e = s:perform('POST', '/tickle');"
        .. " print(r and 'ok' or e.kind)"
      local out = io.popen(env .. " lua5.4 -e " .. q(script) .. " 2>&1"):read("a")
      raw.poke(pport, "done") -- after the child ended: the proxy's first connection, unless it had one
      assert.are.equal("done", p:read("l"), "the proxy got a connection for " .. host .. " (" .. out .. ")")
      p:close()
      if not host:find("::1", 1, true) and not host:find(":0:1", 1, true) then   -- the mock is on 127.0.0.1
        assert.are.equal("ok\n", out, host)
      end
    end)
  end

  it("relaxes certificate checks for an IPv4-mapped loopback address (the same rule)", function()
    local tm = assert(mock.start{ tls = true, pacing = false })
    local port = tm.url:match(":(%d+)/")
    for _, host in ipairs{ "[::ffff:127.0.0.1]", "[::ffff:7f00:1]" } do
      local s = core.new{ base_url = "https://" .. host .. ":" .. port .. "/v1/api" }
      local r, err = s:perform("POST", "/tickle")
      assert(r, host .. ": " .. tostring(err))
      s:close()
    end
    tm:stop()
  end)

  it("ignores proxies from the environment for loopback targets", function()
    local p, port = raw.server(FIRST_LINE_SERVER)
    local proxy = "http://127.0.0.1:" .. port
    -- (never under a sanitizer preload: the child loads the normal module)
    local env = "env -u LD_PRELOAD " .. table.concat({ "http_proxy=" .. proxy, "https_proxy=" .. proxy,
      "HTTPS_PROXY=" .. proxy, "ALL_PROXY=" .. proxy, "all_proxy=" .. proxy }, " ")
    local script = PRELUDE
      .. "local s = require('ibkr').new{ base_url = " .. string.format("%q", m.url) .. ", pacing = false };"
      .. "local r, e = s:auth_status(); print(r and 'ok' or tostring(e))"
    local out = io.popen(env .. " lua5.4 -e " .. q(script) .. " 2>&1"):read("a")
    assert.are.equal("ok\n", out)
    raw.poke(port, "done")
    assert.are.equal("done", p:read("l")) -- the proxy's first connection: nothing came before it
    p:close()
  end)

  it("uses an explicit proxy, with certificate checks on", function()
    local p, port = raw.server(FIRST_LINE_SERVER)
    local s = core.new{ base_url = "https://127.0.0.1:9/v1/api", proxy = "http://127.0.0.1:" .. port,
      timeout = 10 }
    local r, err = s:perform("POST", "/tickle")
    assert.is_nil(r)
    assert.matches("^CONNECT 127%.0%.0%.1:9 ", p:read("l")) -- it went to the proxy
    assert.is_string(err.kind)
    s:close()
    p:close()
  end)

  it("turns certificate checks off only for hosts that are certainly loopback", function()
    local tm = assert(mock.start{ tls = true, pacing = false })
    local port = tm.url:match(":(%d+)/")
    -- literal loopback addresses (curl normalises 127.1) and localhost, pinned to loopback
    for _, host in ipairs{ "127.0.0.1", "127.1", "localhost", "LocalHost" } do
      local s = core.new{ base_url = "https://" .. host .. ":" .. port .. "/v1/api" }
      assert(s:perform("POST", "/tickle"), host)
      s:close()
    end
    -- a name the resolver decides (here the machine's own name, which /etc/hosts maps to
    -- 127.0.0.1 on this host): verified, so the self-signed certificate is refused
    local name = socket.dns.gethostname()
    local ip = name and socket.dns.toip(name)
    if ip == "127.0.0.1" then
      local s = core.new{ base_url = "https://" .. name .. ":" .. port .. "/v1/api", connect_timeout = 2 }
      local r, err = s:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.are.equal("tls", err.kind)
      s:close()
    else
      print("\n[wire_rules] the host name does not resolve to 127.0.0.1 here: resolver case not run")
    end
    tm:stop()
  end)
end)

-- Credentials never reach an error, whatever characters the password holds.
describe("credentials never reach an error", function()
  it("never shows credentials of base_url in tostring, info() or errors", function()
    local s = core.new{ base_url = "http://alice:s3cret@127.0.0.1:9/v1/api", connect_timeout = 1 }
    assert.is_nil(tostring(s):find("s3cret", 1, true))
    assert.is_nil(s:info().base_url:find("s3cret", 1, true))
    assert.are.equal("http://127.0.0.1:9/v1/api", s:info().base_url)
    local _, err = s:perform("POST", "/tickle")
    assert.is_nil(tostring(err):find("s3cret", 1, true))
    s:close()
    local ok, msg = pcall(core.new, { base_url = "ftp://alice:s3cret@127.0.0.1/" })
    assert.is_false(ok)
    assert.is_nil(msg:find("s3cret", 1, true))
  end)

  it("base_url errors show no password holding '#', '?', '/', ':' or '@'", function()
    for _, u in ipairs{ "https://alice:s3cr3t#1@127.0.0.1:5000/v1/api",
      "https://alice:s3cr3t?1@127.0.0.1:5000/v1/api",
      "https://alice:s3/cr3t@127.0.0.1:5000/v1/api", "https://alice:s3:cr@3t@127.0.0.1:5000/v1/api?x" } do
      for _, new in ipairs{ core.new, ibkr.new } do
        local ok, msg = pcall(new, { base_url = u })
        assert.is_false(ok, u)
        assert.is_nil(tostring(msg):find("s3", 1, true), tostring(msg))
        assert.is_nil(tostring(msg):find("cr3t", 1, true), tostring(msg))
      end
    end
  end)

  it("libcurl's message quoting a malformed proxy URL shows no proxy password", function()
    for _, proxy in ipairs{ "http://bob:pr0xy#secret@127.0.0.1:3128",
      "http://bob:pr0xy secret@127.0.0.1:3128" } do
      local s = core.new{ base_url = "http://127.0.0.1:9/v1/api", proxy = proxy, connect_timeout = 1 }
      local r, err = s:perform("POST", "/tickle")
      assert.is_nil(r)
      assert.is_nil(err.message:find("secret", 1, true), err.message)
      assert.is_nil(err.message:find("pr0xy", 1, true), err.message)
      assert.is_nil(tostring(err):find("pr0xy", 1, true), tostring(err))
      s:close()
    end
  end)

  it("err.location is bounded, printable and without credentials", function()
    local loc = "https://user:pa#ss@gw.example/sso/\27[2J\7" .. string.rep("A", 9000) .. "\27]0;x\7"
    local _, _, r, err = exchange(nil, "POST", "/tickle", nil, "HTTP/1.1 302 Found\r\nLocation: " .. loc ..
      "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert.is_nil(r)
    assert.is_string(err.location)
    assert.is_true(#err.location <= 512 + 3, #err.location .. " bytes")
    assert.is_nil(err.location:find("[%z\1-\31\127]"), "control byte in location")
    assert.is_nil(err.location:find("pa#ss", 1, true))
    assert.truthy(err.location:find("^https://gw%.example/sso/\\x1B%[2J\\x07AAAA"), err.location:sub(1, 80))
    assert.is_true(#err.message <= 512 + 3)
  end)
end)

-- A server of kept-alive connections answering every request with {"line":"<method> <target>"}
-- (its request line), `n` requests in all, then exiting.
local function echo_server(n)
  return raw.server("socket = require('socket')\n" .. raw.READ_REQUEST .. string.format([[
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname(); print(port); io.stdout:flush()
srv:settimeout(0)
local conns, left = {}, %d
while left > 0 do
  local ready = socket.select({ srv, table.unpack(conns) }, nil, 20)
  if #ready == 0 then break end
  for _, c in ipairs(ready) do
    if c == srv then
      local nc = srv:accept()
      if nc then conns[#conns + 1] = nc end
    else
      local method, target = read_request(c)
      if method then
        local body = '{"line":"' .. method .. " " .. target .. '"}'
        c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " .. #body
          .. "\r\n\r\n" .. body)
        left = left - 1
      else
        c:close()
        for i, o in ipairs(conns) do if o == c then table.remove(conns, i) break end end
      end
    end
  end
end
]], n))
end

describe("URLs kept parsed", function()
  it("a session calling more distinct URLs than it keeps parsed (16) sends each call to its own, "
      .. "blocking or not, in any order", function()
    local paths = {}
    for i = 1, 20 do paths[i] = "/p" .. i .. (i % 3 == 0 and "?k=" .. i or "") end
    local order = {}
    for i = 1, 20 do order[#order + 1] = i end
    for i = 20, 1, -1 do order[#order + 1] = i end
    for i = 1, 20, 3 do order[#order + 1] = i end
    local p, port = echo_server(2 * #order)
    finally(function() p:close() end)
    local s = core.new{ base_url = "http://127.0.0.1:" .. port .. "/v1/api" }
    for at, i in ipairs(order) do
      local path = paths[i]
      local key = at % 2 == 0 and "n" or "m" -- the same path with queries of the same length
      local copts = i % 2 == 0 and { query = { [key] = i } } or nil
      local sep = path:find("?", 1, true) and "&" or "?"
      local want = "/v1/api" .. path .. (copts and (sep .. key .. "=" .. i) or "")
      local r = assert(s:perform("GET", path, copts))
      assert.are.equal("GET " .. want, r.line)
      local req = assert(s:start("GET", path, copts))
      assert(req:wait(10))
      r = assert(req:result())
      assert.are.equal("GET " .. want, r.line)
      req:close()
    end
    s:close()
  end)
end)
