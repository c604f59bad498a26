-- The request-body encoder (core.encode, and every table body of s:perform / s:start /
-- ibkr's s:request): exact numbers, the array/object rules, escapes, errors, no user code.
-- Bodies on the wire are read back from the mock gateway's echo endpoint. Debian's lua-cjson
-- 2.1.0 is the oracle for reading texts back (its decoder uses strtod, so it is exact); it is
-- not used to encode (it writes at most 14 significant digits).
local core = require("ibkr.core")
local ibkr = require("ibkr")
local cjson = require("cjson").new()
local mock = require("spec.helpers.mock")

cjson.decode_max_depth(1000)

local function bits(x) return string.pack("<d", x) end

-- the error message of encoding v (asserting that it fails, with one printable line)
local function enc_err(v)
  local ok, msg = pcall(core.encode, v)
  assert(not ok, "encoded: " .. tostring(msg))
  assert.is_string(msg)
  assert.is_nil(msg:find("[%c\127]"), "not one printable line: " .. msg)
  assert.truthy(msg:find("cannot encode as JSON: ", 1, true), msg)
  return msg
end

describe("the JSON encoder", function()
  describe("numbers", function()
    it("writes 0.1 + 0.2 and 123456789012345678 exactly", function()
      assert.are.equal("0.30000000000000004", core.encode(0.1 + 0.2))
      assert.are.equal("123456789012345678", core.encode(123456789012345678))
      -- the same value as a float: the exact digits of the double (it reads back bit-identical)
      assert.are.equal("123456789012345680", core.encode(123456789012345678.0))
      assert.are.equal(bits(123456789012345678.0), bits(cjson.decode(core.encode(123456789012345678.0))))
      assert.are.equal('{"conid":123456789012345678,"price":0.30000000000000004}',
        core.encode{ price = 0.1 + 0.2, conid = 123456789012345678 })
    end)

    it("writes every Lua integer as its exact digits", function()
      for _, i in ipairs{ 0, 1, -1, 2 ^ 53 // 1, 2 ^ 53 // 1 + 1, math.maxinteger, math.mininteger,
        1702580846836, -99999999999999999 } do
        assert.are.equal(string.format("%d", i), core.encode(i))
      end
      math.randomseed(7)
      for _ = 1, 2000 do
        local i = math.random(math.mininteger, math.maxinteger)
        assert.are.equal(string.format("%d", i), core.encode({ i }):sub(2, -2))
      end
    end)

    it("writes floats as the shortest text that reads back bit-identical", function()
      math.randomseed(20261130)
      local n = 0
      while n < 20000 do
        local x = string.unpack("<d", string.pack("<i4i4", math.random(-2 ^ 31, 2 ^ 31 - 1),
          math.random(-2 ^ 31, 2 ^ 31 - 1)))
        if x == x and x ~= math.huge and x ~= -math.huge then
          n = n + 1
          local text = core.encode(x)
          assert.truthy(text:match("^%-?%d+%.?%d*e?[-+]?%d*$"), text)
          assert.are.equal(bits(x), bits(cjson.decode(text)), text)
          assert.are.equal(bits(x), bits(core.decode(text) + 0.0), text)
          if x ~= math.floor(x) then
            -- no shorter %.Ng text reads back the same
            for prec = 1, 17 do
              local t = string.format("%." .. prec .. "g", x)
              if tonumber(t) == x then
                assert.is_true(#text <= #t, text .. " longer than " .. t)
                break
              end
            end
          end
        end
      end
    end)

    it("writes integral floats below 2^63 as integer digits, others shortest", function()
      assert.are.equal("9007199254740992", core.encode(2.0 ^ 53))
      assert.are.equal("1000000000000000", core.encode(1e15))
      assert.are.equal("265598", core.encode(265598.0))
      assert.are.equal("-0", core.encode(-0.0))
      assert.are.equal("1e+300", core.encode(1e300))
      assert.are.equal("9.223372036854776e+18", core.encode(2.0 ^ 63))
      assert.are.equal("5e-324", core.encode(4.9406564584124654e-324))
      assert.are.equal("1.7976931348623157e+308", core.encode(1.7976931348623157e308))
    end)

    it("refuses NaN and the infinities with a clear error", function()
      assert.truthy(enc_err(0 / 0):find("NaN", 1, true))
      assert.truthy(enc_err({ order = { price = math.huge } }):find("inf .* at %$%.order%.price$"))
      assert.truthy(enc_err({ 1, 2, -math.huge }):find("-inf .* at %$%[3%]$"))
    end)
  end)

  describe("tables", function()
    it("null, empty_array, array_mt and the empty table", function()
      assert.are.equal(core.null, ibkr.null)
      assert.are.equal(core.empty_array, ibkr.empty_array)
      assert.are.equal(core.array_mt, ibkr.array_mt)
      assert.are_not.equal(ibkr.null, ibkr.empty_array)
      assert.are.equal('{"a":null,"b":[],"c":[],"d":{},"e":[1,2],"f":[1,null,3]}', core.encode{
        a = ibkr.null, b = ibkr.empty_array, c = setmetatable({}, ibkr.array_mt), d = {},
        e = setmetatable({ 1, 2 }, ibkr.array_mt), f = { 1, ibkr.null, 3 } })
      assert.are.equal("[]", core.encode(ibkr.empty_array))
      assert.are.equal("{}", core.encode({}))
      assert.are.equal("null", core.encode(nil))
      assert.are.equal("[true,false]", core.encode{ true, false })
    end)

    it("sorts object members by key bytes, whatever the insertion order", function()
      local keys = { "b", "a", "B", "é", "aa", "a\0b", "", "10", "9", "_" }
      local t1, t2 = {}, {}
      for i = 1, #keys do t1[keys[i]] = i end
      for i = #keys, 1, -1 do t2[keys[i]] = i end
      for i = 1, 100 do t2["tmp" .. i] = i end
      for i = 1, 100 do t2["tmp" .. i] = nil end                    -- rehashed, then emptied
      local text = core.encode(t1)
      assert.are.equal(text, core.encode(t2))
      assert.are.equal('{"":7,"10":8,"9":9,"B":3,"_":10,"a":2,"a\\u0000b":6,"aa":5,"b":1,"é":4}', text)
      local big = {}
      for i = 1, 3000 do big["k" .. i] = i end
      local d = cjson.decode(core.encode(big))
      for i = 1, 3000 do assert.are.equal(i, d["k" .. i]) end
      local prev = ""
      for k in core.encode(big):gmatch('"(k%d+)"') do
        assert.is_true(k > prev)
        prev = k
      end
    end)

    it("refuses mixed, sparse and non-JSON keys, saying where", function()
      assert.truthy(enc_err{ 1, 2, x = 3 }:find("both string keys and array indices at $", 1, true))
      assert.truthy(enc_err{ a = { [1] = 1, [3] = 3 } }:find("sparse array .* at %$%.a$"))
      assert.truthy(enc_err{ [0] = 1 }:find("key 0", 1, true))
      assert.truthy(enc_err{ [-1] = 1 }:find("key -1", 1, true))
      assert.truthy(enc_err{ [1.5] = 1 }:find("key 1.5", 1, true))
      assert.truthy(enc_err{ [0.1] = 1 }:find("key 0.1 ", 1, true))
      assert.truthy(enc_err{ [-math.huge] = 1 }:find("key -inf ", 1, true))
      assert.truthy(enc_err{ [true] = 1 }:find("boolean key", 1, true))
      assert.truthy(enc_err{ [{}] = 1 }:find("table key", 1, true))
      assert.truthy(enc_err(setmetatable({ x = 1 }, ibkr.array_mt)):find("array_mt", 1, true))
      local fn = enc_err{ list = { { id = 1 }, { id = print } } }
      assert.truthy(fn:find("a function at $.list[2].id", 1, true))
      assert.truthy(enc_err{ co = coroutine.create(print) }:find("a thread", 1, true))
      assert.truthy(enc_err{ f = io.stdout }:find("a userdata", 1, true))
      assert.truthy(enc_err{ ["bad\r\nkey"] = print }:find("at $.bad\\r\\nkey", 1, true))
    end)

    it("refuses cycles and nesting deeper than 256; a table used twice is fine", function()
      local t = {}
      t.self = t
      assert.truthy(enc_err(t):find("cycle", 1, true))
      local a = { b = { c = {} } }
      a.b.c.back = a.b
      assert.truthy(enc_err(a):find("cycle%) at %$%.b%.c%.back$"))
      local shared = { 1 }
      assert.are.equal('{"x":[1],"y":[1]}', core.encode{ x = shared, y = shared })
      local deep = {}
      for _ = 2, 256 do deep = { deep } end
      local text = core.encode(deep)                                 -- 256 levels: the decoder's limit
      assert.are.equal(string.rep("[", 255) .. "{}" .. string.rep("]", 255), text)
      assert.is_not_nil(core.decode(text))
      assert.truthy(enc_err({ deep }):find("deeper than 256", 1, true))
      assert.is_nil(core.decode("[" .. text .. "]"))                 -- the same rule both ways
    end)

    it("reads tables raw: no __index, __pairs, __len or __newindex runs", function()
      local calls = 0
      local function boom() calls = calls + 1; error("metamethod ran") end
      local mt = { __index = boom, __pairs = boom, __len = boom, __newindex = boom, __eq = boom,
        __lt = boom, __le = boom, __tostring = boom, __name = "x", __call = boom }
      local proxy = setmetatable({}, { __index = { hidden = 1 }, __pairs = boom })
      assert.are.equal('{"a":{"b":[1,2]},"p":{}}', core.encode{
        a = setmetatable({ b = setmetatable({ 1, 2 }, mt) }, mt), p = proxy })
      assert.are.equal(0, calls)
    end)
  end)

  describe("strings", function()
    it("escapes '\"', '\\' and every control character; '/' and DEL stay as they are", function()
      local all = {}
      for c = 0, 127 do all[#all + 1] = string.char(c) end
      local s = table.concat(all)
      local text = core.encode(s)
      assert.are.equal(1, select(2, text:gsub("\127", "")))
      assert.is_nil(text:find("[\0-\31]"))
      assert.truthy(text:find('\\u0000\\u0001', 1, true))
      assert.truthy(text:find('\\b\\t\\n\\u000b\\f\\r', 1, true))
      assert.truthy(text:find('!\\"#', 1, true))
      assert.truthy(text:find('./0', 1, true))
      assert.truthy(text:find('[\\\\]', 1, true))
      assert.are.equal(s, cjson.decode(text))
      assert.are.equal(s, core.decode(text))
    end)

    it("passes UTF-8 through and refuses bytes that are not UTF-8, in values and keys", function()
      local good = "é€😀\239\191\191\244\143\191\191"                   -- up to U+FFFF, U+10FFFF
      assert.are.equal('"' .. good .. '"', core.encode(good))
      for _, bad in ipairs{ "\255", "a\128", "\192\128", "\193\191", "\224\128\128", "\237\160\128",
        "\237\191\191", "\240\128\128\128", "\244\144\128\128", "\248\136\128\128\128", "\226\130",
        "\226\130x", "\195" } do
        assert.truthy(enc_err{ name = bad }:find("not UTF-8 at $.name", 1, true))
        enc_err{ [bad] = 1 }
      end
    end)
  end)

  it("round-trips 5,000 generated values through cjson's and our decoder", function()
    math.randomseed(99)
    local rand = math.random
    local function gen(depth)
      local c = rand(depth > 3 and 5 or 7)
      if c == 1 then return rand(-2 ^ 53, 2 ^ 53) end
      if c == 2 then return (rand() - 0.5) * 10 ^ rand(-30, 30) end
      if c == 3 then
        local t = {}
        for i = 1, rand(0, 8) do t[i] = utf8.char(rand(0, 0x10FFFF) % 0xD800) end
        return table.concat(t)
      end
      if c == 4 then return rand(2) == 1 end
      if c == 5 then return "s" .. rand(100) end
      local t = {}
      if c == 6 then
        for i = 1, rand(1, 5) do t[i] = gen(depth + 1) end
      else
        for _ = 1, rand(1, 5) do t["k" .. rand(50)] = gen(depth + 1) end
      end
      return t
    end
    local function same(a, b)
      if type(a) == "table" then
        if type(b) ~= "table" then return false end
        for k, v in pairs(a) do if not same(v, b[k]) then return false end end
        for k in pairs(b) do if a[k] == nil then return false end end
        return true
      end
      if type(a) == "number" then return type(b) == "number" and bits(a + 0.0) == bits(b + 0.0) end
      return a == b
    end
    for i = 1, 5000 do
      local v = gen(0)
      local text = core.encode(v)
      assert.is_true(same(v, cjson.decode(text)), "cjson, value " .. i .. ": " .. text)
      assert.is_true(same(v, core.decode(text)), "core, value " .. i .. ": " .. text)
      assert.are.equal(text, core.encode(core.decode(text)))
    end
  end)

  it("is the module's own: ibkr.core loads and encodes with lua-cjson unavailable", function()
    local so = package.searchpath("ibkr.core", package.cpath)
    local script = "package.preload.cjson = function() error('cjson must not be loaded') end " ..
      "package.cpath = '" .. so:gsub("ibkr/core%.so$", "?.so") .. "' " ..
      "io.write(require('ibkr.core').encode{ p = 0.1 + 0.2 })"
    local p = assert(io.popen("lua5.4 -e \"" .. script .. "\" 2>&1"))
    local out = p:read("a")
    p:close()
    assert.are.equal('{"p":0.30000000000000004}', out)
  end)

  it("frees what it built when it fails late (ASan: make asan)", function()
    local big = string.rep("x", 1 << 20)
    for _ = 1, 50 do
      enc_err{ a = big, b = { big, big, 0 / 0 } }
      enc_err{ a = big, z = { k = print } }
    end
  end)

  describe("bodies on the wire (mock gateway echo)", function()
    local m
    setup(function() m = assert(mock.start{ tls = false, pacing = false }) end)
    teardown(function() if m then m:stop() end end)

    local order = { orders = { { conid = 123456789012345678, price = 0.1 + 0.2, quantity = 3,
      side = "BUY", tif = "DAY", cOID = "a/b\"c\n", outsideRTH = false, legs = ibkr.empty_array } } }
    local want = '{"orders":[{"cOID":"a/b\\"c\\n","conid":123456789012345678,"legs":[],' ..
      '"outsideRTH":false,"price":0.30000000000000004,"quantity":3,"side":"BUY","tif":"DAY"}]}'

    it("ibkr.core and ibkr send a table body exactly as encoded, as application/json", function()
      local s = core.new{ base_url = m.url }
      local r = assert(s:perform("POST", "/__mock/echo", { body = order }))
      s:close()
      assert.are.equal(want, r.body)
      local ctype = r.headers["content-type"] or r.headers["Content-Type"]
      assert.truthy(tostring(ctype):find("application/json", 1, true))
      local u = ibkr.new{ base_url = m.url, pacing = false }
      local r2 = assert(u:request("POST", "/__mock/echo", { body = order }))
      u:close()
      assert.are.equal(want, r2.body)
    end)

    it("query numbers follow the same rule: exact, NaN and infinities refused", function()
      local s = core.new{ base_url = m.url }
      local r = assert(s:perform("GET", "/__mock/echo", { query = { price = 0.1 + 0.2,
        conid = 123456789012345678, f = 123456789012345678.0, l = { 1.5, -0.0, 1e300 } } }))
      assert.are.equal("conid=123456789012345678&f=123456789012345680&l=1.5&l=-0&l=1e%2B300" ..
        "&price=0.30000000000000004", r.query)
      m:clear_log()
      for _, bad in ipairs{ 0 / 0, math.huge, -math.huge } do
        local ok, msg = pcall(s.perform, s, "GET", "/__mock/echo", { query = { x = bad } })
        assert.is_false(ok)
        assert.truthy(tostring(msg):find("query value 'x' is NaN or infinite", 1, true))
      end
      assert.are.equal(0, #m:log())
      s:close()
    end)

    it("sends nothing when the body cannot be encoded, and the session stays usable", function()
      local s = core.new{ base_url = m.url }
      m:clear_log()
      local ok, msg = pcall(s.perform, s, "POST", "/iserver/account/U1/orders", { body = { price = 0 / 0 } })
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("NaN .* at %$%.price$"))
      assert.are.equal(0, #m:api_log("/iserver/account/U1/orders"))
      assert.is_false(s:busy())
      assert(s:perform("POST", "/tickle"))
      s:close()
    end)

    it("a body whose metamethods would close the session is encoded raw; nothing runs", function()
      local s = core.new{ base_url = m.url }
      local closer = function() s:close() end
      local body = setmetatable({ 1, 2 }, { __len = closer, __index = closer, __pairs = closer })
      local r = assert(s:perform("POST", "/__mock/echo", { body = { list = body } }))
      assert.are.equal('{"list":[1,2]}', r.body)
      assert.is_false(s:closed())
      s:close()
    end)
  end)
end)
