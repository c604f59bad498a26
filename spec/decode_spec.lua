-- The decoder against lua-cjson (plus the module's integer/null rules) on generated documents:
-- valid JSON decodes to the same values; on mutated input, whatever we accept cjson accepts too,
-- with the same value (cjson is more lenient: "1.", "-.5"; it stops at a raw NUL, which we keep).
local core = require("ibkr.core")
local cjson = require("cjson").new()
cjson.decode_max_depth(256)
cjson.decode_invalid_numbers(false)

local function rules(v)
  if type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do
      if x == cjson.null then
        if type(k) == "number" then out[k] = core.null end
      else
        out[k] = rules(x)
      end
    end
    return out
  elseif math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    return math.tointeger(v)
  end
  return v
end

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then return math.type(a) == math.type(b) and a == b end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local CHARS = { "a", "Z", "0", " ", '\\"', "\\\\", "\\/", "\\n", "\\t", "\\u00e9", "\\ud83d\\ude00",
  "\\u0000", "é", "\1", "\255" }
local NUMS = { "0", "-0", "1", "-1", "12345678901234", "9007199254740992", "9007199254740993",
  "123456789012345678901234", "1.5", "1.0", "-2.50e3", "1e2", "1E-2", "0.1", "1e400", "-1e-400",
  "1702580846836", "-99999999999999999" }

local function gen(rand, depth)
  local function str()
    local t = {}
    for _ = 1, rand(0, 6) do t[#t + 1] = CHARS[rand(#CHARS)] end
    return '"' .. table.concat(t) .. '"'
  end
  local function ws() return ({ "", " ", "\n", "\t\r " })[rand(4)] end
  local c = rand(depth > 4 and 4 or 7)
  if c == 1 then return NUMS[rand(#NUMS)] end
  if c == 2 or c == 4 then return str() end
  if c == 3 then return ({ "true", "false", "null" })[rand(3)] end
  local t = {}
  if c == 5 then
    for i = 1, rand(0, 5) do t[i] = ws() .. gen(rand, depth + 1) .. ws() end
    return "[" .. table.concat(t, ",") .. "]"
  end
  for i = 1, rand(0, 5) do t[i] = ws() .. str() .. ws() .. ":" .. ws() .. gen(rand, depth + 1) end
  return "{" .. table.concat(t, ",") .. "}"
end

local function mutate(rand, s)
  for _ = 1, rand(1, 3) do
    local p, op = rand(1, #s + 1), rand(4)
    if op == 1 then s = s:sub(1, p - 1) .. s:sub(p + 1)
    elseif op == 2 then s = s:sub(1, p - 1) .. string.char(rand(0, 255)) .. s:sub(p)
    elseif op == 3 then s = s:sub(1, p - 1)
    else s = s:sub(1, p - 1) .. ("{}[],:\"\\-.e0n"):sub(rand(13), rand(13)) .. s:sub(p) end
  end
  return s
end

describe("the JSON decoder", function()
  it("decodes 20,000 generated documents exactly as cjson plus the module's rules", function()
    math.randomseed(20261128)
    local rand = math.random
    for i = 1, 20000 do
      local doc = gen(rand, 0)
      local ok, want = pcall(cjson.decode, doc)
      local got, err = core.decode(doc)
      assert(ok, doc)
      assert(got ~= nil, (err and err.message or "") .. " in " .. doc)
      if want == cjson.null then want = core.null end
      assert(same(rules(want), got), "document " .. i .. ": " .. doc)
    end
  end)

  it("accepts nothing that cjson refuses, on 20,000 mutated documents", function()
    math.randomseed(42)
    local rand = math.random
    local refused = 0
    for _ = 1, 20000 do
      local doc = mutate(rand, gen(rand, 0))
      local got, err = core.decode(doc)
      if got == nil then
        refused = refused + 1
        assert.are.equal("json", err.kind)
      else
        local ok, want = pcall(cjson.decode, doc)
        -- cjson reads a C string: it stops at a raw NUL byte, which we pass through in strings
        assert(ok or doc:find("\0", 1, true), "accepted what cjson refuses: " .. doc)
        if ok then
          if want == cjson.null then want = core.null end
          assert(same(rules(want), got), doc)
        end
      end
    end
    assert.is_true(refused > 1000)
  end)

  it("handles escapes, surrogate pairs, duplicate keys and big objects", function()
    assert.are.equal("é😀\0/", core.decode('"\\u00e9\\ud83d\\ude00\\u0000\\/"'))
    assert.is_nil(core.decode('"\\ud83d"'))
    assert.is_nil(core.decode('"\\ude00"'))
    assert.is_nil(core.decode('"\\x"'))
    assert.is_nil(core.decode('{"a":1,"a":null}').a)
    assert.are.equal(2, core.decode('{"a":1,"a":2}').a)
    local parts, arr = {}, {}
    for i = 1, 1000 do
      parts[i] = '"k' .. i .. '":' .. i
      arr[i] = i % 7 == 0 and "null" or tostring(i)
    end
    local big = core.decode("{" .. table.concat(parts, ",") .. "}")
    for i = 1, 1000 do assert.are.equal(i, big["k" .. i]) end
    local a = core.decode("[" .. table.concat(arr, ",") .. "]")
    assert.are.equal(1000, #a)
    assert.are.equal(core.null, a[7])
    assert.are.equal(1000, a[1000])
    assert.is_nil(core.decode(""))
    assert.is_nil(core.decode("{} x"))
    assert.is_nil(core.decode("NaN"))
    assert.are.equal(3, core.decode(" 3 "))
  end)
end)
