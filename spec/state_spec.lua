-- The session states of s:health() and the keep-alive, from bodies and errors. No network.
local state = require("ibkr.state")
local core = require("ibkr.core")
local function ibkr_null() return core.null end

describe("state of a status body", function()
  it("is ready when connected, authenticated, not competing and not un-established", function()
    assert.equal("ready", state.of_status{ authenticated = true, connected = true, competing = false })
    assert.equal("ready", state.of_status{ authenticated = true, connected = true, competing = false,
      established = true })
  end)
  it("distinguishes competing, unauthenticated, disconnected, no_session", function()
    assert.equal("competing", state.of_status{ authenticated = true, connected = true, competing = true })
    assert.equal("unauthenticated",
      state.of_status{ authenticated = false, connected = true, competing = false })
    assert.equal("unauthenticated",
      state.of_status{ authenticated = true, connected = true, established = false })
    assert.equal("disconnected",
      state.of_status{ authenticated = false, connected = false, competing = false })
    assert.equal("no_session", state.of_status{ error = "no session" })
    assert.equal("error", state.of_status{ error = "failed to process request" })
  end)
end)

describe("state of an error", function()
  it("is down for connect and timeout, tls for tls", function()
    for _, k in ipairs{ "connect", "timeout" } do
      assert.equal("down", state.of_error(core.error{ kind = k, message = "x" }))
    end
    assert.equal("tls", state.of_error(core.error{ kind = "tls", message = "x" }))
  end)
  it("is no_session for a redirect to the SSO login pages, error for other redirects", function()
    for _, loc in ipairs{ "https://localhost:5000/sso/Login?forwardTo=22&RL=1", "/sso/Dispatcher" } do
      assert.equal("no_session", state.of_error(core.error{ kind = "http", status = 302, message = "x",
        location = loc }))
    end
    assert.equal("error", state.of_error(core.error{ kind = "http", status = 302, message = "x",
      location = "https://example.com/elsewhere" }))
  end)
  it("is no_session for 401 or a 'no session' error body", function()
    assert.equal("no_session", state.of_error(core.error{ kind = "http", status = 401, message = "x" }))
    assert.equal("no_session", state.of_error(core.error{ kind = "http", status = 403, message = "x",
      data = { error = "no session" } }))
  end)
  it("is error for anything else", function()
    for _, e in ipairs{ { kind = "http", status = 500 }, { kind = "json" }, { kind = "rate_limited" },
                        { kind = "protocol" }, { kind = "too_large" } } do
      e.message = "x"
      assert.equal("error", state.of_error(core.error(e)))
    end
  end)
end)

describe("tickle_status", function()
  it("finds iserver.authStatus or nothing", function()
    local st = { authenticated = true }
    assert.equal(st, state.tickle_status{ iserver = { authStatus = st } })
    assert.is_nil(state.tickle_status{ session = "x" })
    assert.is_nil(state.tickle_status{ iserver = { tickle = true } })
    assert.is_nil(state.tickle_status{ error = "no session" })
  end)
end)

describe("judge", function()
  local function no(endpoint, body, why)
    local ok, reason = state.judge(endpoint, body)
    assert.is_false(ok)
    assert.equal(why, reason)
  end
  local STATUS = { authenticated = true, connected = true, competing = false, fail = "", message = "" }

  it("takes the gateway's good answers", function()
    assert.is_true(state.judge("auth_status", STATUS))
    assert.is_true(state.judge("auth_status", { authenticated = false, connected = false }))
    assert.is_true(state.judge("init_brokerage", STATUS))
    assert.is_true(state.judge("tickle", { session = "ab", iserver = { authStatus = STATUS },
      hmds = { error = "no bridge" } })) -- hmds.error is informational
    assert.is_true(state.judge("tickle", {}))
    assert.is_true(state.judge("sso_validate", { RESULT = true, USER_ID = 1 }))
    assert.is_true(state.judge("logout", { status = true }))
    assert.is_true(state.judge("logout", { confirmed = true }))
    assert.is_true(state.judge("reauthenticate", { message = "triggered" }))
  end)

  it("refuses a top-level error on every endpoint, with the gateway's text", function()
    for _, ep in ipairs(state.ENDPOINTS) do
      no(ep, { error = "failed to process request" }, "failed to process request")
      no(ep, { error = "no session", RESULT = true, status = true, authenticated = true,
        message = "triggered" }, "no session")
    end
  end)

  it("refuses any JSON value that is not an object", function()
    for _, ep in ipairs(state.ENDPOINTS) do
      no(ep, ibkr_null(), "answer is null, not a JSON object")
      no(ep, 5, "answer is number 5, not a JSON object")
      no(ep, true, "answer is boolean true, not a JSON object")
      no(ep, "x", "answer is a string, not a JSON object")
      no(ep, { 1, 2 }, "answer is an array, not a JSON object")
    end
  end)

  it("refuses answers missing what the endpoint always sends, or saying no", function()
    no("auth_status", { connected = true }, "no authenticated in the answer")
    no("init_brokerage", { message = "" }, "no authenticated in the answer")
    no("init_brokerage", { authenticated = false, connected = true,
      fail = "Force compete capability must be used together with compete flag" },
      "Force compete capability must be used together with compete flag")
    no("sso_validate", { USER_ID = 1 }, "no RESULT in the answer")
    no("sso_validate", { RESULT = false }, "RESULT is false")
    no("sso_validate", { RESULT = false, message = "expired" }, "RESULT is false: expired")
    no("logout", { status = false }, "status is false")
    no("logout", {}, "no status in the answer")
    no("reauthenticate", {}, "no message in the answer")
    no("reauthenticate", { message = "busy" }, 'message is "busy", not "triggered"')
  end)

  it("makes the gateway's text one bounded printable line", function()
    local ok, why = state.judge("tickle", { error = "bad\r\nibkr: forged" .. string.rep("x", 500) })
    assert.is_false(ok)
    assert.is_nil(why:find("[%c]"))
    assert.is_true(#why <= state.MAX_TEXT + 3)
  end)

  it("raises for an unknown endpoint", function()
    assert.has_error(function() state.judge("nope", {}) end)
  end)
end)

describe("exit_code", function()
  it("is 0 ready, 2 unreachable, 3 login required, 1 otherwise", function()
    local want = { ready = 0, down = 2, tls = 2, no_session = 3, competing = 1, unauthenticated = 1,
      disconnected = 1, error = 1 }
    for st, code in pairs(want) do assert.equal(code, state.exit_code(st), st) end
  end)
end)

describe("says_wait", function()
  it("is true for 429, 503 with Retry-After and rate_limited, false otherwise", function()
    assert.is_true(state.says_wait(core.error{ kind = "http", status = 429, message = "x" }))
    assert.is_true(state.says_wait(core.error{ kind = "http", status = 503, retry_after = 5, message = "x" }))
    assert.is_true(state.says_wait(core.error{ kind = "rate_limited", retry_after = 5, message = "x" }))
    assert.is_false(state.says_wait(core.error{ kind = "http", status = 503, message = "x" }))
    assert.is_false(state.says_wait(core.error{ kind = "connect", message = "x" }))
  end)
end)
