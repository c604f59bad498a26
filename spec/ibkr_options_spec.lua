-- ibkr.new: option names, types and values; the module's exports. No network.
local ibkr = require("ibkr")

describe("ibkr module", function()
  it("exports the version, null, the core and is_error", function()
    assert.equal(ibkr.core._VERSION, ibkr._VERSION)
    assert.matches("^%d+%.%d+%.%d+", ibkr._VERSION)
    assert.equal(ibkr.core.null, ibkr.null)
    assert.equal(require("ibkr.core"), ibkr.core)
    assert.is_true(ibkr.is_error(ibkr.core.error{ kind = "connect", message = "x" }))
    assert.is_false(ibkr.is_error({ kind = "connect" }))
  end)
end)

describe("ibkr.new", function()
  local function rejects(opts, pattern)
    local ok, err = pcall(ibkr.new, opts)
    assert.is_false(ok, "accepted " .. tostring(pattern))
    assert.matches(pattern, err)
  end

  it("accepts no options at all, and every documented option", function()
    local s = ibkr.new()
    assert.equal("https://localhost:5000/v1/api", s.base_url:gsub("/$", ""))
    s:close()
    s = ibkr.new{
      base_url = "http://127.0.0.1:1/v1/api", verify = false, timeout = 1, connect_timeout = 0.5,
      user_agent = "x/1", headers = { ["X-A"] = "b" }, retries = 0, pacing = false,
      max_body = 1024, cooperative = true, clock = function() return 0 end, sleep = function() end,
    }
    s:close()
    s = ibkr.new{ base_url = "https://gw.example:5000/v1/api", ca_file = "/nonexistent.pem" }
    s:close()
  end)

  it("takes the default URL from $IBKR_BASE_URL", function()
    -- os.getenv cannot be changed in-process: run a child with the variable set
    local cmd = [[IBKR_BASE_URL=http://10.1.2.3:5555/v1/api lua5.4 -e ']]
      .. [[package.path="lua/?.lua;lua/?/init.lua;"..package.path; package.cpath="./?.so;"..package.cpath; ]]
      .. [[io.write(require("ibkr").new().base_url)']]
    local p = assert(io.popen(cmd))
    local out = p:read("a")
    p:close()
    assert.equal("http://10.1.2.3:5555/v1/api", out)
  end)

  it("rejects unknown options", function()
    rejects({ base_uri = "http://x" }, "unknown option 'base_uri'")
    rejects({ retry = 2 }, "unknown option 'retry'")
  end)

  it("rejects wrong types", function()
    rejects({ timeout = "10" }, "timeout")
    rejects({ verify = "no" }, "verify")
    rejects({ headers = "X: y" }, "headers")
    rejects({ retries = 1.5 }, "retries")
    rejects({ pacing = 0 }, "pacing")
    rejects({ cooperative = 1 }, "cooperative")
    rejects({ clock = 1 }, "clock")
    rejects("http://localhost", "table")
  end)

  it("rejects non-positive timeouts", function()
    rejects({ timeout = 0 }, "timeout")
    rejects({ timeout = -1 }, "timeout")
    rejects({ connect_timeout = 0 }, "connect_timeout")
    rejects({ timeout = 0 / 0 }, "timeout")
  end)

  it("rejects a base_url without http(s) scheme or host", function()
    rejects({ base_url = "ftp://localhost/v1/api" }, "http")
    rejects({ base_url = "localhost:5000/v1/api" }, "http")
    rejects({ base_url = "https:///v1/api" }, "host")
    rejects({ base_url = "https://:5000/v1/api" }, "host")
  end)

  it("rejects CR, LF or NUL in header names and values", function()
    rejects({ headers = { ["X-A\r\nB"] = "c" } }, "header")
    rejects({ headers = { ["X-A"] = "b\r\nX-Evil: 1" } }, "header")
    rejects({ headers = { ["X-A"] = "b\nc" } }, "header")
    rejects({ headers = { ["X-A"] = "b\0c" } }, "header")
    rejects({ headers = { ["X\0A"] = "b" } }, "header")
  end)

  it("raises at the caller's line", function()
    local ok, err = pcall(function() ibkr.new{ nope = 1 } end)
    assert.is_false(ok)
    assert.matches("ibkr_options_spec.lua:%d+:", err)
  end)
end)

describe("a closed session", function()
  it("answers every call with kind 'closed', closes idempotently, is to-be-closed", function()
    local s = ibkr.new{ base_url = "http://127.0.0.1:9/v1/api" }
    s:close()
    s:close()
    local names = { "auth_status", "reauthenticate", "logout", "sso_validate", "validate", "tickle",
                    "init_brokerage" }
    for _, name in ipairs(names) do
      local res, err = s[name](s)
      assert.is_nil(res)
      assert.equal("closed", err.kind, name)
      assert.is_true(ibkr.is_error(err))
    end
    local res, err = s:request("GET", "/x")
    assert.is_nil(res)
    assert.equal("closed", err.kind)
    do
      local t <close> = ibkr.new{ base_url = "http://127.0.0.1:9/v1/api" }
      s = t
    end
    assert.equal("closed", select(2, s:tickle()).kind)
  end)
end)

-- Every programmer error of the Lua API names the line of the caller's call: the option checker
-- (ibkr/check.lua) looks past the library's own frames, so a tail call or a wrapper inside the
-- library (s:keepalive tail-calls the keep-alive module) cannot move it.
describe("programmer errors point at the caller's line", function()
  local s
  setup(function() s = ibkr.new{ base_url = "http://127.0.0.1:9/v1/api" } end)
  teardown(function() s:close() end)

  -- fn is a one-line function: its error must carry this file and fn's line
  local function at_call(fn, pattern)
    local ok, err = pcall(fn)
    assert.is_false(ok, "no error for " .. pattern)
    local line = debug.getinfo(fn, "S").linedefined
    assert.matches("ibkr_options_spec%.lua:" .. line .. ": ", err)
    assert.matches(pattern, err)
  end

  it("ibkr.new", function()
    at_call(function() ibkr.new{ nope = 1 } end, "unknown option 'nope'")
    at_call(function() ibkr.new{ timeout = -1 } end, "option 'timeout' must be a finite number > 0")
    at_call(function() ibkr.new{ retries = 1.5 } end, "option 'retries' must be a whole number")
    at_call(function() ibkr.new("http://localhost") end, "options must be a table")
    at_call(function() ibkr:new{} end, "call it as ibkr%.new{...}")
    at_call(function() ibkr.new{ base_url = "ftp://x/v1/api" } end, "http")
    at_call(function() ibkr.new{ headers = { ["X\n"] = "v" } } end, "header")
    at_call(function() ibkr.new{ oauth = { consumer_key = "k" } } end, "oauth")
  end)

  it("s:keepalive and s:keepalive_loop", function()
    at_call(function() s:keepalive{ intervall = 5 } end,
      "s:keepalive: unknown option 'intervall' %(did you mean 'interval'%?%)")
    at_call(function() s:keepalive{ interval = 0 } end, "option 'interval' must be a finite number > 0")
    at_call(function() s:keepalive{ on_state = "x" } end, "option 'on_state' must be a function")
    at_call(function() s:keepalive(5) end, "options must be a table")
    at_call(function() s:keepalive{ sleep = print } end, "unknown option 'sleep'")
    at_call(function() s:keepalive_loop{ slep = print } end, "s:keepalive_loop: unknown option 'slep'")
  end)

  it("s:wait_ready, s:init_brokerage, s:request", function()
    at_call(function() s:wait_ready{ timeuot = 1 } end, "unknown option 'timeuot'")
    at_call(function() s:wait_ready{ timeout = 0 / 0 } end, "option 'timeout' must be a finite number >= 0")
    at_call(function() s:init_brokerage{ compete = "yes" } end, "option 'compete' must be a boolean")
    at_call(function() s:init_brokerage(true) end, "options must be a table")
    at_call(function() s:request("GET", "/x", { nope = 1 }) end, "unknown option 'nope'")
    at_call(function() s:request("GET", "/x", { body = 1 }) end, "option 'body' must be a table, a string")
    at_call(function() s:request("GET", "/x", { headers = { X = "a\nb" } }) end, "header")
    at_call(function() s:request("GE T", "/x") end, "method must be an HTTP method name")
    at_call(function() s:request("GET", "x") end, "path must start with '/'")
    at_call(function() s:request("GET", "/a b") end, "ibkr:")
  end)

  it("every session method called with a dot says how to call it", function()
    local calls = {
      tickle = function() s.tickle() end,
      auth_status = function() s.auth_status() end,
      reauthenticate = function() s.reauthenticate() end,
      logout = function() s.logout() end,
      sso_validate = function() s.sso_validate() end,
      init_brokerage = function() s.init_brokerage{ compete = true } end,
      request = function() s.request("GET", "/iserver/accounts") end,
      health = function() s.health() end,
      is_ready = function() s.is_ready() end,
      wait_ready = function() s.wait_ready{ timeout = 1 } end,
      state = function() s.state() end,
      stats = function() s.stats() end,
      stop = function() s.stop() end,
      close = function() s.close() end,
      keepalive = function() s.keepalive{ interval = 5 } end,
      keepalive_loop = function() s.keepalive_loop{ interval = 5 } end,
    }
    for name, fn in pairs(calls) do
      at_call(fn, "call it as s:" .. name .. "%(%.%.%.%), not s%." .. name)
    end
    at_call(function() s.validate() end, "call it as s:sso_validate%(") -- the alias is one function
    assert.is_false(s:closed()) -- s.close() closed nothing
  end)
end)
