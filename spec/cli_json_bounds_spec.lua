-- ibkr-session --json is bounded like the human line: a 3 MB gateway error (its decoded body, its
-- message) and a status with thousands of keys become a JSON line of a few KiB, still valid JSON,
-- cut where it was cut with "…"; `request`'s answer, the data asked for, stays whole. Against a
-- raw socket server answering with such bodies, and ibkr-session as a process.
local cli = require("spec.helpers.cli")
local raw = require("spec.helpers.raw")
local cjson = require("cjson")

local LIMIT = 20000 -- bytes: out.MAX_LINE (16 KiB of strings) plus keys and punctuation

-- A server answering the next `n` requests with `status` and the body that Lua expression
-- `body` makes (JSON; made there: a 3 MB argument does not fit a command line), then exiting.
local function server(n, status, body)
  return raw.server("socket = require('socket')\n" .. raw.READ_REQUEST .. string.format([[
local body = %s
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname(); print(port); io.stdout:flush()
srv:settimeout(20)
for _ = 1, %d do
  local c = srv:accept()
  if not c then break end
  if read_request(c) then
    c:send("HTTP/1.1 %d X\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
      .. #body .. "\r\n\r\n" .. body)
  end
  c:close()
end
]], body, n, status))
end

describe("ibkr-session --json bounds", function()
  it("a 3 MB gateway error is one short JSON line, in one-shot commands and the keep-alive", function()
    local big = [['{"error":"' .. string.rep("e", 3 * 1024 * 1024) .. '","list":[' .. string.rep("1,", 50000)
      .. '1]}']]
    local p, port = server(3, 500, big)
    finally(function() p:close() end)
    local url = "http://127.0.0.1:" .. port .. "/v1/api"
    local rc, out, err = cli.run{ "--url", url, "--json", "--retries", "0", "tickle" }
    assert.equal(1, rc)
    assert.equal("", err)
    assert.is_true(#out < LIMIT, "a line of " .. #out .. " bytes")
    local doc = cjson.decode(out)
    assert.equal(500, doc.error.status)
    assert.is_true(#doc.error.message <= 310)
    assert.is_true(#doc.error.data.error <= 1003 and doc.error.data.error:sub(-3) == "\u{2026}")
    assert.matches("^\u{2026} %d+ more$", doc.error.data.list[#doc.error.data.list])
    -- the keep-alive's events
    rc, out = cli.run{ "--url", url, "--json", "keepalive", "--duration", "1" }
    assert.equal(1, rc) -- the last state: error
    for _, line in ipairs(cli.json_lines(out)) do
      assert.is_true(#cjson.encode(line) < LIMIT)
    end
    for line in out:gmatch("[^\n]+") do assert.is_true(#line < LIMIT, "a line of " .. #line .. " bytes") end
    -- request: an error is bounded too
    rc, out = cli.run{ "--url", url, "--json", "request", "GET", "/x" }
    assert.equal(1, rc)
    assert.is_true(#out < LIMIT, "a line of " .. #out .. " bytes")
  end)

  it("a status with thousands of keys is bounded; request's own answer is whole", function()
    local body = [[(function()
      local keys = {}
      for i = 1, 5000 do keys[#keys + 1] = string.format('"k%05d":"%s"', i, string.rep("v", 20)) end
      return '{"authenticated":false,"connected":true,' .. table.concat(keys, ",") .. "}"
    end)()]]
    local p, port = server(2, 200, body)
    finally(function() p:close() end)
    local url = "http://127.0.0.1:" .. port .. "/v1/api"
    local rc, out = cli.run{ "--url", url, "--json", "status" }
    assert.equal(1, rc)
    assert.is_true(#out < LIMIT, "a line of " .. #out .. " bytes")
    local doc = cjson.decode(out)
    assert.equal("unauthenticated", doc.state)
    assert.matches("^\u{2026} %d+ more$", doc.result["\u{2026}"])
    rc, out = cli.run{ "--url", url, "--json", "request", "GET", "/iserver/whatever" }
    assert.equal(0, rc)
    doc = cjson.decode(out)
    assert.equal(string.rep("v", 20), doc.result.k05000) -- all 5000 keys
  end)
end)
