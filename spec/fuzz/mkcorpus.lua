-- Writes the seed corpus of spec/fuzz/fuzz_response.c into DIR (default spec/fuzz/seeds):
-- the real JSON bodies of ../shared/reference (the gateway facts' examples and every example of
-- IBKR's OpenAPI spec), wrapped for each mode of the target. Run: lua5.4 spec/fuzz/mkcorpus.lua [DIR]
local cjson = require("cjson")

local dir = arg[1] or "spec/fuzz/seeds"
local ref = os.getenv("IBKR_REFERENCE") or "../shared/reference"
os.execute("mkdir -p '" .. dir .. "'")

local n = 0
local function seed(mode, param, data)
  n = n + 1
  local f = assert(io.open(string.format("%s/seed-%d-%04d", dir, mode, n), "wb"))
  f:write(string.char(mode, param), data)
  f:close()
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- the bodies: ```json blocks of the facts file, OpenAPI examples
local bodies = {}
for block in read(ref .. "/ibkr-gateway-facts.md"):gmatch("```json\n(.-)```") do
  bodies[#bodies + 1] = block
end
local seen = {}
local function walk(v)
  if type(v) ~= "table" then return end
  for k, x in pairs(v) do
    if k == "example" and type(x) == "table" then
      local ok, text = pcall(cjson.encode, x)
      if ok and not seen[text] and #text < 4096 then
        seen[text] = true
        bodies[#bodies + 1] = text
      end
    end
    walk(x)
  end
end
walk(cjson.decode(read(ref .. "/ibkr-openapi.json")))
-- the shapes the normalisation cares about
for _, b in ipairs{ "1.0", "-0", "9007199254740993", "1e300", "[null,1,2.5,null]", '{"a":null,"b":[null]}',
                    string.rep("[", 300) .. string.rep("]", 300), '"\\ud800"', "", "null", "{}" } do
  bodies[#bodies + 1] = b
end

local function http(status, headers, body)
  return "HTTP/1.1 " .. status .. "\r\n" .. table.concat(headers, "\r\n") ..
         (#headers > 0 and "\r\n" or "") .. "\r\n" .. body
end

local function gzip(s)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "wb"))
  f:write(s)
  f:close()
  local p = assert(io.popen("gzip -c -n '" .. tmp .. "'", "r"))
  local z = p:read("a")
  p:close()
  os.remove(tmp)
  return z
end

for i, b in ipairs(bodies) do
  seed(0, 0, b)
  if i % 4 == 0 then seed(1, i % 61, b) end
  if i % 3 == 0 then
    seed(2, i % 8, http("200 OK", { "Content-Type: application/json", "Content-Length: " .. #b }, b))
  end
end

local json = '{"session":"abc","iserver":{"authStatus":{"authenticated":true,"connected":true}}}'
local responses = {
  http("200 OK", { "Content-Type: application/json", "Transfer-Encoding: chunked" },
       string.format("%x\r\n%s\r\n0\r\n\r\n", #json, json)),
  http("200 OK", { "Content-Encoding: gzip", "Content-Length: " .. #gzip(json) }, gzip(json)),
  http("200 OK", { "Content-Type: text/html", "Content-Length: 13" }, "<html></html>"),
  http("200 OK", { "Content-Length: 0" }, ""),
  http("204 No Content", {}, ""),
  http("200 OK", { "Content-Length: 40" }, '{"truncated":'),
  http("200 OK", {}, json),                       -- read until close
  http("429 Too Many Requests", { "Retry-After: 7", "Content-Length: 0" }, ""),
  http("503 Service Unavailable",
       { "Retry-After: Wed, 21 Oct 2015 07:28:00 GMT", "Content-Length: 2" }, "{}"),
  http("401 Unauthorized", { "Content-Type: application/json", "Content-Length: 26" },
       '{"error":"not authorized"}'),
  http("302 Found", { "Location: file:///etc/passwd", "Content-Length: 0" }, ""),
  http("301 Moved", { "Location: http://other.example/v1/api/x", "Content-Length: 0" }, ""),
  "HTTP/1.1 100 Continue\r\n\r\n" .. http("200 OK", { "Content-Length: 2" }, "{}"),
  "HTTP/1.0 200 OK\r\n\r\n" .. json,
  http("200 OK", { "Content-Length: 4" }, "\xff\xfe\"\x80"),
  "garbage\r\n\r\n",
  "",
}
for i, r in ipairs(responses) do
  seed(2, i % 8, r)
  seed(2, 0x80 | (i % 8), r)                      -- the same under max_body = 64
end

local sep = "\xff"
for _, parts in ipairs{
  { "/iserver/auth/status", "X-Test", "1", "conid", "265598" },
  { "/a b", "X", "v", "k", "v" },
  { "/ok", "X-Bad", "a\r\nInjected: 1", "q", "x" },
  { "/ok", "Bad Name", "v", "q", "\0\r\n" },
  { "/p?x=1", "Accept", "text/plain", "k&=", "v v" },
} do
  seed(3, 0, table.concat(parts, sep))
end
-- mode 4: several responses on one kept-alive connection (split at 0xFE), a stale extra one too
local ok_body = '{"authenticated":true,"connected":true}'
local one = http("200 OK", { "Content-Type: application/json", "Content-Length: " .. #ok_body }, ok_body)
local bad = http("503 Service Unavailable", { "Content-Type: application/json", "Retry-After: 2",
  "Content-Length: 16" }, '{"error":"busy"}')
for i, parts in ipairs{
  { one, one, one },
  { one .. one, one, one },                        -- an unsolicited second response after the first
  { one, bad, one, one },
  { one, "HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n{}", one },
} do
  seed(4, i * 7, table.concat(parts, "\xfe"))
end
-- mode 5 (byte 0 >= 0xF0): what a gateway sends on its websocket after the 101
local function frame(op, payload, fin, len)
  len = len or #payload
  local b1 = (fin == false and 0 or 0x80) | op
  if len < 126 then return string.char(b1, len) .. payload end
  if len < 65536 then return string.pack(">BBI2", b1, 126, len) .. payload end
  return string.pack(">BBI8", b1, 127, len) .. payload
end
local greeting = '{"topic":"system","success":"user1","isFT":false,"isPaper":true}'
for i, w in ipairs{
  frame(1, greeting) .. frame(1, '{"topic":"sts","args":{"authenticated":false}}'),
  frame(2, '{"topic":"act","args":{"accounts":["U1"]}}') .. frame(1, "not json") .. frame(1, "[1,null]"),
  frame(1, '{"topic":"smd",', false) .. frame(9, "ping") .. frame(0, '"31":"1.5"}'),
  frame(1, "a", false) .. frame(1, "b"),                    -- a new message inside one
  frame(8, string.pack(">I2", 4000) .. "bye"),
  frame(8, "\3"),
  frame(1, "x", true, 100 * 1024 * 1024),
  string.char(0x81, 0x84, 1, 2, 3, 4) .. "abcd",            -- masked
  frame(1, "\xff\xfe"),
  frame(9, string.rep("p", 126)),
  frame(1, string.rep("z", 70000)):sub(1, 3000),
} do
  seed(0xF0, i % 2, w)
end
print(n .. " seeds in " .. dir)
