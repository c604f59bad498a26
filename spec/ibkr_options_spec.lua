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
