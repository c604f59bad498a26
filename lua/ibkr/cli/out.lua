-- ibkr-session's output: every text that came from the gateway becomes one bounded, printable
-- line, and JSON lines that are valid UTF-8 and carry no control byte. ibkr-session writes no
-- escape codes of its own at all (no colours), so NO_COLOR and non-terminals need nothing.

local M = {}

M.MAX_TEXT = 300 -- bytes of one gateway text in a human line (like error bodies, cut)

local NAMED = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\\"] = "\\\\" }

-- Escapes one byte that a terminal might act on.
local function esc_byte(c)
  return NAMED[c] or string.format("\\x%02x", c:byte())
end

-- Escapes a string so it prints as it is, on one line: control bytes (C0, DEL), C1 controls
-- (U+0080..U+009F, which some terminals obey as escape sequences) and bytes that are not UTF-8
-- become \n, \r, \t, \xNN; backslashes are doubled, so nothing forged looks like an escape.
function M.printable(s)
  s = tostring(s)
  local parts, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x20 or c == 0x7f or c == 0x5c then
      parts[#parts + 1] = esc_byte(s:sub(i, i))
      i = i + 1
    elseif c < 0x80 then
      local j = s:find("[%z\1-\31\127\\\128-\255]", i) or n + 1
      parts[#parts + 1] = s:sub(i, j - 1)
      i = j
    else
      local len = c >= 0xF0 and 4 or c >= 0xE0 and 3 or c >= 0xC2 and 2 or 0
      local ch = len > 0 and s:sub(i, i + len - 1)
      local cp = ch and #ch == len and utf8.len(ch) == 1 and utf8.codepoint(ch)
      if cp and not (cp >= 0x80 and cp <= 0x9f) then
        parts[#parts + 1] = ch
        i = i + len
      else
        parts[#parts + 1] = esc_byte(s:sub(i, i))
        i = i + 1
      end
    end
  end
  return table.concat(parts)
end

-- One gateway text for a human line: printable and at most `max` (MAX_TEXT) bytes, cut on a
-- character boundary with "..." added.
function M.text(s, max)
  s = M.printable(s)
  max = max or M.MAX_TEXT
  if #s <= max then return s end
  local cut = max
  while cut > 0 and (s:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return s:sub(1, cut) .. "..."
end

------------------------------------------------------------------------------------------------
-- JSON

local json = require("cjson").new() -- private instance: our settings never touch the user's cjson
json.encode_sparse_array(true)
json.encode_number_precision(14) -- lua-cjson 2.1.0's most (epoch milliseconds have 13 digits)

-- A copy of v fit for a JSON line: strings that are not UTF-8 get U+FFFD for each bad byte,
-- ibkr.null stays null, error objects become plain tables, cycles are cut.
local function clean(v, seen)
  local t = type(v)
  if t == "string" then
    if utf8.len(v) then return v end
    return (v:gsub("[\128-\255]+", function(run)
      local out, i = {}, 1
      while i <= #run do
        local c = run:byte(i)
        local len = c >= 0xF0 and 4 or c >= 0xE0 and 3 or c >= 0xC2 and 2 or 0
        local ch = len > 0 and run:sub(i, i + len - 1)
        if ch and #ch == len and utf8.len(ch) == 1 then
          out[#out + 1] = ch
          i = i + len
        else
          out[#out + 1] = "\239\191\189"
          i = i + 1
        end
      end
      return table.concat(out)
    end))
  elseif t == "table" then
    if seen[v] then return nil end
    seen[v] = true
    local c = {}
    for k, x in pairs(v) do
      if type(k) == "string" or math.type(k) == "integer" then c[k] = clean(x, seen) end
    end
    seen[v] = nil
    return c
  elseif t == "userdata" then
    return json.null -- ibkr.null (a light userdata)
  elseif t == "number" or t == "boolean" then
    return v
  end
  return nil
end

-- Unicode escapes for what cjson leaves raw: DEL and the C1 controls.
local RAW = {
  ["\127"] = "\\u007f",
}
for cp = 0x80, 0x9f do RAW[utf8.char(cp)] = string.format("\\u%04x", cp) end

-- One JSON document on one line. cjson writes "/" as "\/" (a "\/" can only come from that escape,
-- a literal backslash being "\\"), undone so paths read well; JSON itself escapes C0 controls.
function M.json(v)
  local s = json.encode(clean(v, {}))
  s = s:gsub("\\/", "/"):gsub("\127", RAW):gsub("\194[\128-\159]", RAW)
  return s
end

M.null = json.null

return M
