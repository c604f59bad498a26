-- JSON for the mock gateway: lua-cjson decodes; encoding is done here so that empty arrays stay
-- arrays, integers keep all their digits and object keys come out sorted (stable logs and docs).
local cjson = require("cjson")

local json = {}

local decoder = cjson.new()
local ARRAY = {}

json.null = cjson.null

-- Marks a table as a JSON array (so that an empty one encodes as [] and not as {}).
function json.array(t)
  return setmetatable(t or {}, ARRAY)
end

-- cjson escapes every "/" as "\/"; undo that for readability (valid JSON either way).
local function encode_string(s)
  return (cjson.encode(s):gsub("(\\+)/", function(bs)
    if #bs % 2 == 1 then
      return bs:sub(2) .. "/"
    end
  end))
end

local function is_array(t)
  if getmetatable(t) == ARRAY then
    return true
  end
  local n = #t
  if n == 0 then
    return false
  end
  local count = 0
  for _ in pairs(t) do
    count = count + 1
  end
  return count == n
end

local function encode_number(v)
  if math.type(v) == "integer" then
    return string.format("%d", v)
  end
  if v ~= v or v == math.huge or v == -math.huge then
    return "null"
  end
  local s = string.format("%.14g", v)
  if tonumber(s) ~= v then
    s = string.format("%.17g", v)
  end
  return s
end

local encode_value

local function encode_table(t, depth, out)
  if depth > 64 then
    error("json: nesting too deep", 0)
  end
  if is_array(t) then
    out[#out + 1] = "["
    for i = 1, #t do
      if i > 1 then
        out[#out + 1] = ","
      end
      encode_value(t[i], depth + 1, out)
    end
    out[#out + 1] = "]"
    return
  end
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = tostring(k)
  end
  table.sort(keys)
  out[#out + 1] = "{"
  for i, k in ipairs(keys) do
    if i > 1 then
      out[#out + 1] = ","
    end
    out[#out + 1] = encode_string(k)
    out[#out + 1] = ":"
    local v = t[k]
    if v == nil then
      v = t[tonumber(k)]
    end
    encode_value(v, depth + 1, out)
  end
  out[#out + 1] = "}"
end

encode_value = function(v, depth, out)
  local tv = type(v)
  if tv == "table" then
    encode_table(v, depth, out)
  elseif tv == "string" then
    out[#out + 1] = encode_string(v)
  elseif tv == "number" then
    out[#out + 1] = encode_number(v)
  elseif tv == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == nil or v == cjson.null then
    out[#out + 1] = "null"
  else
    error("json: cannot encode a " .. tv, 0)
  end
end

function json.encode(v)
  local out = {}
  encode_value(v, 0, out)
  return table.concat(out)
end

-- Returns the decoded value, or nil and a message.
function json.decode(s)
  local ok, v = pcall(decoder.decode, s)
  if not ok then
    return nil, tostring(v)
  end
  return v
end

return json
