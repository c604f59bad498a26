-- The shipped test helper (ibkr.mock.testing) as users get it: the mock started by this very Lua
-- with this process's package paths (not the spec helper's bin/ command), driven through its API.
local socket = require("socket")

-- a fresh copy of the module: the spec helper (spec/helpers/mock.lua) sets a command on the shared one
package.loaded["ibkr.mock.testing"] = nil
local testing = require("ibkr.mock.testing")
package.loaded["ibkr.mock.testing"] = nil

local alive = require("ibkr.mock.proc").alive

describe("ibkr.mock.testing", function()
  it("starts a mock on a free port, sets its state, adds faults, reads its log, stops it", function()
    local gw = assert(testing.start({ state = "unauthenticated", init_delay = 0, pacing = false }))
    assert.matches("^https://127%.0%.0%.1:%d+/v1/api$", gw.url)
    assert.is_nil(testing.command)
    local s = gw:session({ retries = 0 })
    local st = assert(s:auth_status())
    assert.is_false(st.authenticated)
    gw:set_state("ready")
    assert.is_true(assert(s:auth_status()).authenticated)
    gw:fault({ path = "/tickle", kind = "status", status = 503 })
    local r, err = s:tickle()
    assert.is_nil(r)
    assert.equals(503, err.status)
    assert.is_table(assert(s:tickle()))
    local log = gw:api_log("/tickle")
    assert.equals(2, #log)
    assert.equals("status", log[1].fault)
    assert.equals(503, log[1].status)
    gw:penalty({ seconds = 30, retry_after = 600 })
    assert.equals(600, gw:state().penalty.retry_after)
    gw:clear_penalty()
    s:close()
    local pid = gw.pid
    gw:stop()
    assert.is_false(alive(pid))
    gw:stop() -- idempotent
  end)

  it("stops the mock at the end of a <close> scope and takes other settings in config", function()
    local pid
    do
      local gw <close> = assert(testing.start({ tls = false, config = { connection_close = true,
        sso_window = 120 } }))
      pid = gw.pid
      local cfg = gw:config()
      assert.is_true(cfg.connection_close)
      assert.equals(120, cfg.sso_window)
      local r = assert(gw:request("POST", "/v1/api/tickle"))
      assert.equals("close", r.headers.connection)
    end
    assert.is_false(alive(pid))
  end)

  it("raises on unknown or ill-typed options and reports a mock that cannot start", function()
    assert.has_error(function() testing.start({ init_dealy = 0 }) end,
      "ibkr.mock.testing.start: unknown option init_dealy")
    assert.has_error(function() testing.start({ tls = "yes" }) end,
      "ibkr.mock.testing.start: option tls must be a boolean")
    local first <close> = assert(testing.start({ tls = false }))
    local gw, err = testing.start({ args = { "--port", tostring(first.port), "--no-tls" } })
    assert.is_nil(gw)
    assert.matches("did not start", err)
    assert.matches("cannot listen", err)
    gw, err = testing.start({ tls = false, config = { no_such_setting = 1 } })
    assert.is_nil(gw)
    assert.matches("unknown config key", err)
  end)

  it("leaves no mock behind when its test process dies", function()
    local cmd = string.format("lua5.4 -e %s 2>&1", testing.shell_quote(
      string.format("package.path = %q; package.cpath = %q; ", package.path, package.cpath)
      .. "local gw = assert(require('ibkr.mock.testing').start{tls = false}); print(gw.pid); "
      .. "io.stdout:flush(); os.exit(0, false)"))
    local p = assert(io.popen(cmd))
    local pid = tonumber(p:read("l"))
    p:close()
    assert.is_number(pid)
    local deadline = socket.gettime() + 5
    while alive(pid) and socket.gettime() < deadline do
      socket.sleep(0.05) -- polling a process we do not own: no event to wait on
    end
    assert.is_false(alive(pid), "the mock outlived its test process")
  end)
end)
