-- ibkr-session's output: every text that came from the gateway becomes one bounded, printable
-- line, and JSON lines that are valid UTF-8 and carry no control byte. ibkr-session writes no
-- escape codes of its own at all (no colours), so NO_COLOR and non-terminals need nothing.

local core = require("ibkr.core")

local M = {}

M.MAX_TEXT = 300 -- bytes of one gateway text in a human line (like error bodies, cut)

-- Every gateway text goes through the core's sanitiser (one copy of the rules: error.c): control
-- bytes (C0, DEL), C1 controls, line/paragraph separators, bidi overrides and bytes that are not
-- UTF-8 become visible escapes (\r, \n, \t, \xNN, \u{XXXX}), so nothing prints as two lines.
function M.printable(s)
  return core.printable(tostring(s), math.maxinteger)
end

-- One gateway text for a human line: printable and at most `max` (MAX_TEXT) bytes, cut on a
-- character boundary with "…" added.
function M.text(s, max)
  return core.printable(tostring(s), max or M.MAX_TEXT)
end

-- A gateway text as the value of a `name="value"` field: backslashes and quotes escaped first,
-- so the text can neither end the field early nor add a field of its own.
function M.quoted(s, max)
  return '"' .. M.text((tostring(s):gsub('[\\"]', "\\%0")), max) .. '"'
end

------------------------------------------------------------------------------------------------
-- JSON

-- Bounds of one JSON line, as the human line has MAX_TEXT: whatever the gateway sends (a 3 MB
-- error body decoded into `data`, a status with a thousand keys), a line stays small. A string
-- longer than MAX_FIELD bytes is cut (on a character) with "…"; a table keeps MAX_ITEMS entries
-- (arrays: the first, then "… N more"; objects: the first keys in sorted order, then "…": "N
-- more"); below MAX_DEPTH levels a table becomes "…"; once MAX_LINE bytes of strings are spent,
-- the rest is cut the same way. `ibkr-session request`'s answer is exempt: it is the data asked for.
M.MAX_FIELD = 1000
M.MAX_ITEMS = 100
M.MAX_DEPTH = 10
M.MAX_LINE = 16384
local MORE = "\u{2026}" -- …

-- s cut to at most max bytes on a character boundary, with "…"
local function cut(s, max)
  if #s <= max then return s end
  local c = s:sub(1, max)
  for _ = 1, 3 do
    if utf8.len(c) then break end
    c = c:sub(1, -2)
  end
  return c .. MORE
end

-- The keys of table v in JSON order: 1..n for an array, else sorted (strings and integers).
local function keys_of(v)
  local n, keys = #v, {}
  if n > 0 or getmetatable(v) == core.array_mt then
    for i = 1, n do keys[i] = i end
    return keys, true
  end
  for k in pairs(v) do
    if type(k) == "string" or math.type(k) == "integer" then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  return keys, false
end

-- A copy of v fit for a JSON line: strings that are not UTF-8 get U+FFFD for each bad byte,
-- ibkr.null stays null, arrays stay arrays, error objects become plain tables, cycles are cut;
-- bounded (above) unless `b` is nil.
local clean
local function clean_table(v, seen, b, depth)
  if seen[v] then return nil end
  if b and depth > M.MAX_DEPTH then return MORE end
  seen[v] = true
  local keys, array = keys_of(v)
  local c = {}
  for i, k in ipairs(keys) do
    if b and (i > M.MAX_ITEMS or b.left <= 0) then
      local more = string.format("%s %d more", MORE, #keys - i + 1)
      if array then c[#c + 1] = more else c[MORE] = more end
      break
    end
    if b and not array and type(k) == "string" then b.left = b.left - #k end
    c[k] = clean(v[k], seen, b, depth + 1)
  end
  seen[v] = nil
  if array or getmetatable(v) == core.array_mt then setmetatable(c, core.array_mt) end
  return c
end

function clean(v, seen, b, depth)
  local t = type(v)
  if t == "string" then
    if b then
      v = cut(v, math.max(0, math.min(M.MAX_FIELD, b.left)))
      b.left = b.left - #v
    end
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
    return clean_table(v, seen, b, depth or 0)
  elseif t == "userdata" then
    return core.null -- ibkr.null (a light userdata)
  elseif t == "number" then
    -- a number beyond a double's range (the gateway sent 1e999) has no JSON form: shown as text
    if v ~= v then return "NaN" end
    if v == math.huge or v == -math.huge then return v > 0 and "Infinity" or "-Infinity" end
    return v
  elseif t == "boolean" then
    return v
  end
  return nil
end

-- Unicode escapes for what JSON allows raw but a terminal may obey: DEL and the C1 controls.
local RAW = {
  ["\127"] = "\\u007f",
}
for cp = 0x80, 0x9f do RAW[utf8.char(cp)] = string.format("\\u%04x", cp) end

-- One JSON document on one line, numbers exact (the core's encoder: json.c; lua-cjson would cut
-- them to 14 digits), bounded as above — except the top-level fields named in `whole` (a set),
-- kept entire (`whole` = true: all of v). A value the encoder refuses (a sparse array left by a
-- cut cycle) still gives one valid JSON line, naming the problem.
function M.json(v, whole)
  local b = { left = M.MAX_LINE }
  local c
  if whole == true then
    c = clean(v, {})
  elseif whole and type(v) == "table" then
    local rest = {}
    for k, x in pairs(v) do if not whole[k] then rest[k] = x end end
    c = clean(rest, {}, b)
    for k in pairs(whole) do c[k] = clean(v[k], {}) end
  else
    c = clean(v, {}, b)
  end
  local ok, s = pcall(core.encode, c)
  if not ok then s = core.encode{ error = "cannot show this value as JSON: " .. tostring(s) } end
  return (s:gsub("\127", RAW):gsub("\194[\128-\159]", RAW))
end

M.null = core.null

return M
