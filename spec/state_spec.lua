-- The session states of s:health() and the keep-alive, from bodies and errors. No network.
local state = require("ibkr.state")
local core = require("ibkr.core")

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
  it("is down for connect, timeout and tls", function()
    for _, k in ipairs{ "connect", "timeout", "tls" } do
      assert.equal("down", state.of_error(core.error{ kind = k, message = "x" }))
    end
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
