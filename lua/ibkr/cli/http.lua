-- A minimal, strict HTTP/1.x request-head parser and the responses of ibkr-session's listener
-- (ibkr/cli/listen.lua). Only what GET and HEAD need: requests with a body are refused. Strict
-- (RFC 9110/9112): CRLF line ends only, no bare CR or LF, no obs-fold, no white space before a
-- header's colon, token methods and header names, visible-ASCII targets, one Host in HTTP/1.1.
-- Bounded: the head, the request line and the number of headers have limits, and garbage is
-- refused as soon as it shows, without waiting for more. Pure functions of strings: no I/O.

local M = {}

M.MAX_HEAD = 8192     -- bytes of a request head, request line and final empty line included
M.MAX_TARGET = 1024   -- bytes of a request target
M.MAX_HEADERS = 64    -- header lines
M.MAX_EMPTY = 4       -- empty lines accepted before a request line (RFC 9112 §2.2)

M.REASONS = {
  [200] = "OK", [400] = "Bad Request", [404] = "Not Found", [405] = "Method Not Allowed",
  [408] = "Request Timeout", [413] = "Content Too Large", [414] = "URI Too Long",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [503] = "Service Unavailable", [505] = "HTTP Version Not Supported",
}

local TCHAR = "[!#$%%&'*+%-.^_`|~%w]"
local TOKEN = "^" .. TCHAR .. "+$"

local function refuse(status, why) return nil, status, why end

-- Garbage that no more bytes can mend, in an incomplete head: a first byte that cannot start a
-- method (a TLS handshake, binary junk), a NUL, a bare LF or a bare CR followed by something else.
local function hopeless(buf, start)
  local c = buf:sub(start, start)
  if c ~= "" and not c:match(TCHAR) then return "not an HTTP request" end
  if buf:find("%z", start) then return "NUL byte in the request head" end
  local i = buf:find("[\r\n]", start)
  while i do
    local c1, c2 = buf:sub(i, i), buf:sub(i + 1, i + 1)
    if c1 == "\n" or (c2 ~= "" and c2 ~= "\n") then return "a line end that is not CRLF" end
    i = buf:find("[\r\n]", i + 2)
  end
  return nil
end

-- The request line -> method, target, version; or nil, status, why.
local function request_line(line)
  local method, target, version = line:match("^([^ ]+) ([^ ]+) ([^ ]+)$")
  if not method then return refuse(400, "malformed request line") end
  if not method:match(TOKEN) then return refuse(400, "malformed method") end
  if #target > M.MAX_TARGET then return refuse(414, "request target over " .. M.MAX_TARGET .. " bytes") end
  if not target:match("^[\33-\126]+$") then return refuse(400, "malformed request target") end
  if version == "HTTP/1.1" or version == "HTTP/1.0" then return method, target, version end
  if version:match("^HTTP/%d%.%d$") then return refuse(505, "only HTTP/1.0 and HTTP/1.1") end
  return refuse(400, "malformed HTTP version")
end

-- origin-form (/path?query), absolute-form (http://host/path) or "*" -> path, query; or nil.
local function split_target(target)
  if target == "*" then return "*", "" end
  local rest = target:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+(.*)$")
  if rest then target = rest == "" and "/" or rest end
  if target:sub(1, 1) ~= "/" or target:find("#", 1, true) then return nil end
  local path, query = target:match("^([^?]*)%??(.*)$")
  return path, query
end

-- Header lines -> table (lower-case name -> value; repeated ones joined with ", "); or nil, ...
local SINGLE = { host = true, ["content-length"] = true }
local function header_fields(lines)
  if #lines - 1 > M.MAX_HEADERS then return refuse(431, "more than " .. M.MAX_HEADERS .. " header lines") end
  local h = {}
  for i = 2, #lines do
    local name, value = lines[i]:match("^([^:]*):(.*)$")
    if not name or not name:match(TOKEN) then return refuse(400, "malformed header line") end
    value = value:match("^[ \t]*(.-)[ \t]*$")
    if value:find("[%z\1-\8\10-\31\127]") then return refuse(400, "control byte in a header value") end
    name = name:lower()
    if h[name] and SINGLE[name] then return refuse(400, "repeated " .. name .. " header") end
    h[name] = h[name] and (h[name] .. ", " .. value) or value
  end
  return h
end

-- Whether the connection stays open after the answer: HTTP/1.1 unless "Connection: close",
-- HTTP/1.0 only with "Connection: keep-alive".
local function keeps_alive(version, h)
  local conn = (h.connection or ""):lower()
  local function has(tok)
    for t in conn:gmatch("[^,%s]+") do if t == tok then return true end end
    return false
  end
  if version == "HTTP/1.1" then return not has("close") end
  return has("keep-alive")
end

-- parse(buf) -> req, used | nil (the head is not complete yet) | nil, status, why (refused: answer
-- `status` and close). req = { method, target, path, query, version, headers, keep_alive }; `used`
-- is the number of bytes of buf the head took (a pipelined request may follow).
function M.parse(buf)
  local start = 1
  for _ = 1, M.MAX_EMPTY do
    if buf:sub(start, start + 1) ~= "\r\n" then break end
    start = start + 2
  end
  local stop = buf:find("\r\n\r\n", start, true)
  local bad = hopeless(stop and buf:sub(1, stop + 3) or buf, start)
  if bad then return refuse(400, bad) end
  local first = buf:find("\r\n", start, true)
  if (first or #buf + 1) - start > M.MAX_TARGET + 64 then return refuse(414, "request line too long") end
  if not stop then
    if #buf > M.MAX_HEAD then return refuse(431, "request head over " .. M.MAX_HEAD .. " bytes") end
    return nil
  end
  if stop + 3 > M.MAX_HEAD then return refuse(431, "request head over " .. M.MAX_HEAD .. " bytes") end
  local lines = {}
  for line in (buf:sub(start, stop - 1) .. "\r\n"):gmatch("(.-)\r\n") do lines[#lines + 1] = line end
  local method, target, version = request_line(lines[1])
  if not method then return nil, target, version end
  local h, status, why = header_fields(lines)
  if not h then return nil, status, why end
  if version == "HTTP/1.1" and not h.host then return refuse(400, "HTTP/1.1 request without Host") end
  if h["transfer-encoding"] then return refuse(501, "request bodies are not taken") end
  local len = h["content-length"]
  if len and not len:match("^%d+$") then return refuse(400, "malformed Content-Length") end
  if len and tonumber(len) > 0 then return refuse(413, "request bodies are not taken") end
  local path, query = split_target(target)
  if not path then return refuse(400, "malformed request target") end
  return { method = method, target = target, path = path, query = query, version = version,
    headers = h, keep_alive = keeps_alive(version, h) }, stop + 3
end

-- response(status, headers, body, head_only, keep_alive) -> the bytes of an HTTP/1.1 answer.
-- headers: a list of {name, value}; Content-Length (of body) and Connection are added. With
-- head_only (a HEAD request) the body is left out, its length kept.
function M.response(status, headers, body, head_only, keep_alive)
  body = body or ""
  local out = { "HTTP/1.1 ", tostring(status), " ", M.REASONS[status] or "Unknown", "\r\n" }
  for _, h in ipairs(headers or {}) do out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  out[#out + 1] = "Content-Length: " .. #body .. "\r\n"
  out[#out + 1] = "Connection: " .. (keep_alive and "keep-alive" or "close") .. "\r\n\r\n"
  if not head_only then out[#out + 1] = body end
  return table.concat(out)
end

return M
