-- The gateway counts arrivals, the client's pacer its sends: a request that reaches the gateway late
-- (the first of a connection, after its connect and TLS handshake) must not let the next request to
-- the same path arrive within that path's limit of it. Against the mock gateway (pacing on) behind
-- a relay that holds the first bytes of each connection (spec/helpers/slow_start_proxy.lua).
local ibkr = require("ibkr")
local mock = require("spec.helpers.mock")

describe("pacing by arrival", function()
  local m, proxy, pid, url
  setup(function()
    m = assert(mock.start{ tls = false })
    proxy = assert(io.popen("echo $$; exec lua5.4 spec/helpers/slow_start_proxy.lua " .. m.port .. " 0.3"))
    pid = assert(tonumber(proxy:read("l")))
    url = "http://127.0.0.1:" .. assert(tonumber(proxy:read("l"))) .. "/v1/api"
  end)
  teardown(function()
    os.execute("kill " .. pid)
    proxy:close()
    m:stop()
  end)

  it("spaces a tickle from the answer to one that arrived late, not from its send", function()
    m:clear_log()
    local s <close> = ibkr.new{ base_url = url, retries = 0 }
    assert(s:tickle())                  -- a new connection: reaches the gateway 0.3 s after its send
    local res, err = s:tickle()         -- booked a second after the first one's send, it arrived
    assert.truthy(res, tostring(err))   -- 0.3 s early: a 429 from the gateway's count
    local log = m:api_log("/tickle")
    assert.equal(2, #log)
    for _, e in ipairs(m:log()) do assert.are_not.equal(429, e.status, e.api) end
  end)
end)
