-- Error objects: every message is one bounded, printable line, tostring prints only kind, method,
-- path and message, and the message of a non-2xx answer says what the gateway said: its JSON error
-- text, a redirect target, an HTML page's title. Real
-- answers come from the mock gateway's faults and, where the raw bytes matter, from a plain TCP
-- listener (luasocket) playing the gateway.
local core = require("ibkr.core")
local ibkr = require("ibkr")
local socket = require("socket")
local rawsrv = require("spec.helpers.raw")
local mock = require("spec.helpers.mock")

local ELLIPSIS = "\226\128\166"

-- one printable line: no C0 control, DEL, C1 control (UTF-8 or raw), line separator or bidi
-- override, and valid UTF-8
local function assert_line(s, max)
  assert.is_string(s)
  assert.is_nil(s:find("[%z\1-\31\127]"), "control byte in: " .. s)
  assert.is_not_nil(utf8.len(s), "not UTF-8: " .. s)
  for _, c in utf8.codes(s) do
    assert.is_false((c >= 0x80 and c <= 0x9F) or c == 0x2028 or c == 0x2029 or
      (c >= 0x202A and c <= 0x202E) or (c >= 0x2066 and c <= 0x2069), "unsafe code point in: " .. s)
  end
  if max then assert.is_true(#s <= max, #s .. " bytes") end
  return s
end

-- Starts POST /tickle on a core session (base URL with `userinfo` when given), plays the server:
-- reads the request head, answers the raw bytes `response`, closes. Returns what the request
-- returned.
local function answer_raw(response, userinfo)
  local srv = assert(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  local s = core.new{ base_url = "http://" .. (userinfo or "") .. "127.0.0.1:" .. port .. "/v1/api" }
  local req = assert(s:start("POST", "/tickle"))
  local deadline = core.monotonic() + 10
  local c = rawsrv.accept(srv, req, deadline)
  local head = ""
  while not head:find("\r\n\r\n", 1, true) do
    assert(core.monotonic() < deadline, "no request")
    req:step()
    local data, err, partial = c:receive(4096)
    head = head .. (data or partial or "")
    if err == "closed" then break end
    if not data then socket.select({ c }, nil, 0.01) end
  end
  local r, err, status = rawsrv.finish(c, srv, req, response, deadline)
  s:close()
  return r, err, status
end

local function http(status, ctype, body, extra)
  return string.format("HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s" ..
    "Connection: close\r\n\r\n%s", status, ctype, #body, extra or "", body)
end

describe("error messages", function()
  describe("are one bounded, printable line", function()
    it("core.error escapes CR, LF and control bytes in the message and cuts it", function()
      local e = core.error{ kind = "http", method = "POST", path = "/tickle",
        message = "failed\r\nibkr: http: POST /tickle: forged\27[2J\7" }
      assert.are.equal("failed\\r\\nibkr: http: POST /tickle: forged\\x1B[2J\\x07", e.message)
      assert.are.equal("ibkr: http: POST /tickle: failed\\r\\nibkr: http: POST /tickle: forged\\x1B[2J\\x07",
        assert_line(tostring(e)))
      local long = core.error{ kind = "x", message = string.rep("é", 1000) }
      assert.are.equal(string.rep("é", 256) .. ELLIPSIS, long.message)   -- 512 bytes, never half a char
      local esc = core.error{ kind = "x", message = string.rep("\1", 1000) }
      assert.are.equal(string.rep("\\x01", 128) .. ELLIPSIS, esc.message) -- never half an escape
      assert.are.equal("exactly", core.error{ kind = "x", message = "exactly" }.message)
      assert.are.equal(string.rep("a", 512), core.error{ kind = "x", message = string.rep("a", 512) }.message)
    end)

    it("escapes C1 controls, line separators, bidi overrides and bytes that are not UTF-8", function()
      local e = core.error{ kind = "x",
        message = "a\194\133b\194\155c\226\128\168d\226\128\174e\226\129\166f\255g\192\128h\127" }
      assert.are.equal("a\\u{0085}b\\u{009B}c\\u{2028}d\\u{202E}e\\u{2066}f\\xFFg\\xC0\\x80h\\x7F", e.message)
      assert.are.equal("plain é 😀 \\ ok", core.printable("plain é 😀 \\ ok"))
      assert.are.equal("ab" .. ELLIPSIS, core.printable("abc", 2))
    end)

    it("makes any bytes one bounded printable line, and leaves such a line as it is", function()
      math.randomseed(5)
      local pieces = { "a", " ", "\\", "\r", "\n", "\0", "\27", "\127", "é", "😀", "\194\133", "\226\128\168",
        "\226\128\174", "\239\187\191", "\255", "\192", "\237\160\128", "\244\144\128\128", "\226\130" }
      for _ = 1, 1000 do
        local t = {}
        for i = 1, math.random(0, 300) do
          t[i] = math.random(4) == 1 and string.char(math.random(0, 255)) or pieces[math.random(#pieces)]
        end
        local raw = table.concat(t)
        local max = math.random(1, 600)
        local line = assert_line(core.printable(raw, max), max + 3)
        if #line <= max then assert.are.equal(line, core.printable(line, max)) end
        assert.are.equal(core.printable(raw), core.error{ kind = "x", message = raw }.message)
      end
    end)

    it("tostring escapes every field it prints, even of an error a user modified", function()
      local e = core.error{ kind = "http", message = "m" }
      e.kind = "http\nibkr: forged"
      e.method = "GET\r"
      e.path = "/x\27]0;title\7"
      e.message = "two\nlines " .. string.rep("z", 5000)
      local line = assert_line(tostring(e), 1400)
      local want = "ibkr: http\\nibkr: forged: GET\\r /x\\x1B]0;title\\x07: two\\nlines z"
      assert.are.equal(want, line:sub(1, #want))
      assert.are.equal(ELLIPSIS, line:sub(-3))
      e.message = { "not text" }
      e.method, e.path = nil, nil
      assert.are.equal("ibkr: http\\nibkr: forged", tostring(e))
      e.kind = nil
      assert.are.equal("ibkr: error", tostring(e))
    end)

    it("leaves the userinfo of URLs out of messages", function()
      local e = core.error{ kind = "connect", message = "cannot reach " ..
        "https://me:s3cret@gw.example:5000/v1/api (via http://proxyuser:pw@proxy:3128); " ..
        "mail x@y.example is kept" }
      assert.are.equal("cannot reach https://gw.example:5000/v1/api (via http://proxy:3128); " ..
        "mail x@y.example is kept", e.message)
      assert.is_nil(tostring(e):find("s3cret", 1, true))
    end)

    it("tostring prints only kind, method, path and message, and runs no metamethod", function()
      local e = core.error{ kind = "http", method = "GET", path = "/p", message = "m", status = 401,
        body = "secret-body", data = { token = "secret-data" }, location = "https://u:secret@h/",
        headers = { Authorization = "secret-auth", Cookie = "secret-cookie" }, url = "https://u:secret@h/" }
      assert.are.equal("ibkr: http: GET /p: m", tostring(e))
      local mt = getmetatable(e)
      local calls = 0
      local proxy = setmetatable({ kind = "k" }, { __tostring = mt.__tostring,
        __index = function() calls = calls + 1; return "from __index" end })
      assert.are.equal("ibkr: k", tostring(proxy))
      assert.are.equal(0, calls)
      assert.are.equal("ibkr: 42: 7", tostring(setmetatable({ kind = 42, message = 7 }, mt)))
    end)
  end)

  describe("of real answers", function()
    local m, s, u
    setup(function()
      m = assert(mock.start{ tls = false, pacing = false })
      s = core.new{ base_url = m.url }
      u = ibkr.new{ base_url = m.url, pacing = false, retries = 0 }
    end)
    teardown(function()
      if s then s:close() end
      if u then u:close() end
      if m then m:stop() end
    end)

    it("a gateway error text with CR/LF cannot forge a second line", function()
      local forged = "failed to process request\r\nibkr: http: POST /tickle: HTTP 200: authenticated"
      m:fault{ path = "/tickle", kind = "status", status = 500, body = { error = forged } }
      local _, err = s:perform("POST", "/tickle")
      assert.are.equal(forged, err.data.error)                      -- the data keeps the gateway's words
      assert.are.equal("HTTP 500: failed to process request\\r\\n" ..
        "ibkr: http: POST /tickle: HTTP 200: authenticated", err.message)
      assert_line(tostring(err))
      m:fault{ path = "/tickle", kind = "status", status = 500, body = { error = forged } }
      local r, err2 = u:tickle()
      assert.is_nil(r)
      assert.are.equal(err.message, err2.message)
      assert_line(tostring(err2))
    end)

    it("control bytes in the gateway's error text do not reach the terminal (raw bytes)", function()
      local body = '{"error":"bad\27[2J\27]0;pwned\7 \0 \127 \194\155 \255 end\r\nibkr: forged"}'
      local _, err = answer_raw(http(400, "application/json", body))
      assert.are.equal(400, err.status)
      assert.are.equal("HTTP 400: bad\\x1B[2J\\x1B]0;pwned\\x07 \\x00 \\x7F \\u{009B} \\xFF " ..
        "end\\r\\nibkr: forged", err.message)
      assert_line(tostring(err))
    end)

    it("a long gateway error text is cut; the body keeps 4096 bytes", function()
      local text = string.rep("0123456789", 1000)
      m:fault{ path = "/tickle", kind = "status", status = 503, body = { error = text } }
      local _, err = s:perform("POST", "/tickle")
      assert_line(err.message, 512 + 3)
      assert.are.equal(ELLIPSIS, err.message:sub(-3))
      assert.truthy(err.message:find("^HTTP 503: 0123456789"))
      assert.are.equal(4096, #err.body)
      assert_line(tostring(err), 700)
    end)

    it("says the gateway's message, fail, detail or title when there is no error text", function()
      local cases = {
        { { message = "Please query /accounts first" }, "HTTP 400: Please query /accounts first" },
        { { error = "", message = "blank error skipped" }, "HTTP 400: blank error skipped" },
        { { fail = "Force compete capability must be used together with compete flag" },
          "HTTP 400: Force compete capability must be used together with compete flag" },
        { { type = "/simple", title = "Unauthorized", status = 401, detail = "Access token expired" },
          "HTTP 400: Access token expired" },
        { { error = { code = 1 } }, "HTTP 400" },
        { {}, "HTTP 400" },
      }
      for _, c in ipairs(cases) do
        m:fault{ path = "/tickle", kind = "status", status = 400, body = c[1] }
        local _, err = s:perform("POST", "/tickle")
        assert.are.equal(c[2], err.message)
      end
      m:fault{ path = "/tickle", kind = "status", status = 500, body = '"a JSON string"' }
      assert.are.equal("HTTP 500: a JSON string", select(2, s:perform("POST", "/tickle")).message)
      m:fault{ path = "/tickle", kind = "status", status = 503, body = "" }
      assert.are.equal("HTTP 503", select(2, s:perform("POST", "/tickle")).message)
    end)

    it("summarises an HTML error page by its title (the CDN's 403 Access Denied, an HTML 404)", function()
      local denied = "<HTML><HEAD>\n<TITLE>Access Denied</TITLE>\n</HEAD><BODY>\n<H1>Access Denied</H1>\n" ..
        "You don't have permission to access this server.<P>\nReference&#32;&#35;18&#46;1</BODY>\n</HTML>\n"
      m:fault{ path = "/tickle", kind = "status", status = 403, content_type = "text/html", body = denied }
      local _, err = s:perform("POST", "/tickle")
      assert.are.equal("HTTP 403: Access Denied", err.message)
      assert.is_nil(err.data)
      m:fault{ path = "/tickle", kind = "status", status = 403, content_type = "text/html", body = denied }
      local _, err2 = u:tickle()
      assert.are.equal("HTTP 403: Access Denied", err2.message)
      local pages = {
        { '<!DOCTYPE html><html><head><meta charset="utf-8"><title lang="en">\n  Error 404 -\n ' ..
          "Not\tFound  </title></head><body></body></html>", "HTTP 404: Error 404 - Not Found" },
        { "<html><head><title>Tom &amp; Jerry &lt;3 &quot;x&quot; &#39;y&#39; &#x41;&nbsp;B " ..
          "&bogus; &#0;</title>",
          "HTTP 404: Tom & Jerry <3 \"x\" 'y' A B &bogus; &#0;" },
        { "<html><body><h1 class=x>Not <b>Found</b></h1></body></html>", "HTTP 404: Not Found" },
        { "<html><titlebar>no</titlebar><title></title><body>nothing</body></html>", "HTTP 404" },
        { "<html><title>\27[31mred\r\nibkr: forged</title>", "HTTP 404: \\x1B[31mred ibkr: forged" },
        { "<title>" .. string.rep("long ", 100) .. "</title>", nil },
      }
      for _, p in ipairs(pages) do
        m:fault{ path = "/tickle", kind = "status", status = 404, content_type = "text/html", body = p[1] }
        local _, e = s:perform("POST", "/tickle")
        if p[2] then assert.are.equal(p[2], e.message) end
        assert_line(e.message, 260)
      end
    end)

    it("says a short plain-text body, but not binary or long ones", function()
      m:fault{ path = "/tickle", kind = "status", status = 400, content_type = "text/plain",
        body = "Bad Request\r\n" }
      assert.are.equal("HTTP 400: Bad Request", select(2, s:perform("POST", "/tickle")).message)
      m:fault{ path = "/tickle", kind = "status", status = 502, content_type = "text/plain",
        body = "\0\1\2binary" }
      assert.are.equal("HTTP 502", select(2, s:perform("POST", "/tickle")).message)
      m:fault{ path = "/tickle", kind = "status", status = 502, content_type = "text/plain",
        body = string.rep("x ", 1000) }
      assert.are.equal("HTTP 502", select(2, s:perform("POST", "/tickle")).message)
    end)

    it("names the redirect target of a 302 to the login page (not followed)", function()
      m:fault{ path = "/tickle", kind = "redirect" }
      local _, err = s:perform("POST", "/tickle")
      assert.are.equal(302, err.status)
      assert.truthy(err.message:find("^HTTP 302 redirect to http://127%.0%.0%.1:%d+" ..
        "/sso/Login%?forwardTo=22&RL=1&ip2loc=on %(not followed%)$"), err.message)
      m:fault{ path = "/tickle", kind = "redirect", status = 307, location = "/sso/Dispatcher" }
      local _, err2 = u:tickle()
      assert.truthy(err2.message:find("^HTTP 307 redirect to .*/sso/Dispatcher %(not followed%)$"),
        err2.message)
    end)

    it("never shows userinfo in a redirect target (message or field); control bytes are escaped", function()
      local loc = "Location: https://user:secret@gw.example/sso/Login\r\n"
      local _, err = answer_raw(http(302, "text/html", "", loc))
      assert.are.equal("HTTP 302 redirect to https://gw.example/sso/Login (not followed)", err.message)
      assert.is_nil(tostring(err):find("secret", 1, true))
      local _, err2 = answer_raw(http(302, "text/html", "", "Location: /sso/\27[2J\194\155x\r\n"))
      assert_line(err2.message)
      assert_line(tostring(err2))
      -- a relative target is resolved against the request URL: the base_url's credentials stay out
      local _, err3 = answer_raw(http(302, "text/html", "", "Location: /sso/Login?RL=1\r\n"), "me:pa55@")
      assert.truthy(err3.message:find("^HTTP 302 redirect to http://127%.0%.0%.1:%d+/sso/Login%?RL=1 " ..
        "%(not followed%)$"), err3.message)
      assert.truthy(err3.location:find("^http://127%.0%.0%.1:%d+/sso/Login%?RL=1$"), err3.location)
    end)
  end)
end)
