-- ibkr.run: what it accepts (coroutines, objects with :coroutine(), lists of both) and its option
-- checks: anything it cannot use raises at the caller's line instead of being ignored.
local ibkr = require("ibkr")

local function ends() return coroutine.create(function() end) end

-- The error `fn` raises, which must point at `line` of this file.
local function raised_at(line, fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "did not raise")
  local where, msg = tostring(err):match("^(.-:%d+): (.*)$")
  assert.equal("spec/run_spec.lua:" .. line, where, tostring(err))
  return msg
end

local function here() return debug.getinfo(2, "l").currentline end

describe("ibkr.run options", function()
  it("an unknown option raises at the caller's line (it used to be ignored)", function()
    local line = here() + 1
    local msg = raised_at(line, function() local r = ibkr.run(ends(), { duraton = 1 }); return r end)
    assert.equal("ibkr.run: unknown option 'duraton' (known: clock, duration, sleep)", msg)
  end)

  it("every option is checked: type, NaN, negative", function()
    for opts, says in pairs{
      [{ duration = 0 / 0 }] = "'duration' must be a number of seconds >= 0",
      [{ duration = -1 }] = "'duration' must be a number of seconds >= 0",
      [{ duration = "1" }] = "'duration' must be a number, not a string",
      [{ clock = 1 }] = "'clock' must be a function, not a number",
      [{ sleep = "x" }] = "'sleep' must be a function, not a string",
      [{ [1] = 5 }] = "unknown option '1'",
    } do
      local line = here() + 1
      local msg = raised_at(line, function() local r = ibkr.run(ends(), opts); return r end)
      local known = says:find("unknown") and " (known: clock, duration, sleep)" or ""
      assert.equal("ibkr.run: " .. says .. known, msg)
    end
    local line = here() + 1
    local msg = raised_at(line, function() local r = ibkr.run(ends(), 5); return r end)
    assert.equal("ibkr.run: options must be a table, not a number", msg)
  end)

  it("accepts a duration of 0 and of math.huge", function()
    assert.is_false(ibkr.run(coroutine.create(function() coroutine.yield(60) end), { duration = 0 }))
    assert.is_true(ibkr.run(ends(), { duration = math.huge }))
    assert.is_true(ibkr.run(ends(), {}))
  end)
end)

describe("ibkr.run drives", function()
  it("coroutines, objects with a :coroutine() method (streams) and lists of both", function()
    local log = {}
    local function worker(name)
      return coroutine.create(function()
        coroutine.yield(0.01)
        log[#log + 1] = name
      end)
    end
    local stream = { co = worker("stream") }
    function stream:coroutine() return self.co end
    assert.is_true(ibkr.run(stream))
    assert.same({ "stream" }, log)
    local stream2 = { co = worker("stream2") }
    function stream2:coroutine() return self.co end
    assert.is_true(ibkr.run({ worker("a"), stream2 }))
    table.sort(log)
    assert.same({ "a", "stream", "stream2" }, log)
    assert.is_true(ibkr.run({}))
  end)

  it("raises at the caller's line on anything else", function()
    for x, says in pairs{
      [42] = "expects a coroutine, an object with a :coroutine() method, or a list of them; got a number",
      [{ 1 }] = "element 1 is a number, not a coroutine or an object with a :coroutine() method",
      [{ ends(), "x" }] = "element 2 is a string, not a coroutine or an object with a :coroutine() method",
      [{ coroutine = function() return 1 end }] =
        "the argument:coroutine() returned a number, not a coroutine",
      [{ { coroutine = function() return {} end } }] =
        "element 1:coroutine() returned a table, not a coroutine",
      [{ name = "not a list" }] =
        "expects a coroutine, an object with a :coroutine() method, or a list of them",
    } do
      local line = here() + 1
      assert.equal("ibkr.run: " .. says, raised_at(line, function() local r = ibkr.run(x); return r end))
    end
  end)
end)
