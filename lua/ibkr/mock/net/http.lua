-- HTTP/1.1 text: request-head parsing and response-head formatting for the mock gateway.
-- No I/O here; the server loop (ibkr.mock.net.server) feeds bytes in and writes bytes out.
local http = {}

http.reasons = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [301] = "Moved Permanently", [302] = "Found", [303] = "See Other", [307] = "Temporary Redirect",
  [308] = "Permanent Redirect", [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
  [404] = "Not Found", [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict",
  [410] = "Gone", [411] = "Length Required", [413] = "Payload Too Large", [415] = "Unsupported Media Type",
  [417] = "Expectation Failed", [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
}

function http.reason(status)
  return http.reasons[status] or "Status " .. tostring(status)
end

local TOKEN = "^[%w!#%$%%&'%*%+%.%^_`|~%-]+$"

function http.is_token(s)
  return s:find(TOKEN) ~= nil
end

-- True when the first byte of a buffer can start a request line (so binary garbage and TLS
-- handshakes sent to a plain-HTTP port are refused at once instead of waiting for a timeout).
function http.plausible_start(buf)
  return buf:find("^[%w!#%$%%&'%*%+%.%^_`|~%-]") ~= nil
end

-- Parses "METHOD target HTTP/1.x". Returns method, target, minor-version or nil, status.
function http.parse_request_line(line)
  local method, target, major, minor = line:match("^(%S+) (%S+) HTTP/(%d)%.(%d)$")
  if not method or not http.is_token(method) then
    return nil, 400
  end
  if major ~= "1" then
    return nil, 505
  end
  if target:find("[%z\1-\31\127]") then
    return nil, 400
  end
  return method, target, tonumber(minor)
end

-- Parses the header lines of a head (without the request line). Returns a map of lowercased
-- names to values (repeated names joined with ", ") and an ordered list of {name, value};
-- or nil, status.
function http.parse_headers(lines, max_count)
  local map, list = {}, {}
  for i = 1, #lines do
    local line = lines[i]
    if line:find("^[ \t]") then
      return nil, 400 -- obsolete line folding
    end
    local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
    if not name or not http.is_token(name) or value:find("[%z\r\n]") then
      return nil, 400
    end
    if #list >= max_count then
      return nil, 431
    end
    local lname = name:lower()
    list[#list + 1] = { name, value }
    if map[lname] then
      map[lname] = map[lname] .. ", " .. value
    else
      map[lname] = value
    end
  end
  return map, list
end

-- Splits a head (request line + headers, without the final CRLFCRLF) into lines.
function http.split_lines(head)
  local lines = {}
  for line in (head .. "\r\n"):gmatch("(.-)\r\n") do
    lines[#lines + 1] = line
  end
  return lines
end

-- Parses a full request head. Returns a request table or nil, status.
function http.parse_head(head, max_headers)
  local lines = http.split_lines(head)
  local method, target, minor = http.parse_request_line(lines[1] or "")
  if not method then
    return nil, target
  end
  table.remove(lines, 1)
  local headers, list = http.parse_headers(lines, max_headers)
  if not headers then
    return nil, list
  end
  local path, query = target:match("^([^?]*)%??(.*)$")
  return {
    method = method,
    target = target,
    path = path,
    query = query,
    minor = minor,
    version = "1." .. tostring(minor),
    headers = headers,
    header_list = list,
  }
end

-- Whether the connection stays open after this request (before the response's own say).
function http.wants_keepalive(req)
  local c = (req.headers.connection or ""):lower()
  if req.minor >= 1 then
    return not c:find("close", 1, true)
  end
  return c:find("keep-alive", 1, true) ~= nil
end

function http.date(t)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", t)
end

-- Formats a response head. headers: list of {name, value}.
function http.format_head(status, reason, headers)
  local out = { "HTTP/1.1 ", tostring(status), " ", reason or http.reason(status), "\r\n" }
  for _, h in ipairs(headers) do
    out[#out + 1] = h[1] .. ": " .. tostring(h[2]) .. "\r\n"
  end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

function http.chunk(data)
  return string.format("%x\r\n", #data) .. data .. "\r\n"
end

-- Parses "%xd-percent-encoded" query strings into a table (last value wins).
function http.parse_query(q)
  local t = {}
  for pair in (q or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    local function unesc(s)
      s = s:gsub("+", " ")
      return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
    end
    t[unesc(k)] = unesc(v)
  end
  return t
end

return http
