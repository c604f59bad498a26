-- s:stats() counters (ibkr/stats.lua) and their Prometheus rendering (ibkr.metrics), against the
-- mock gateway, on a fake clock (ages are exact). The text is checked by a real Prometheus parser:
-- Debian's python3-prometheus-client (spec/helpers/promparse.lua).
local ibkr = require("ibkr")
local metrics = require("ibkr.metrics")
local mock = require("spec.helpers.mock")
local fake_time = require("spec.helpers.clock").new
local prom = require("spec.helpers.promparse")

describe("s:stats()", function()
  local m, s, ft
  setup(function()
    m = assert(mock.start{ tls = false, pacing = false, init_delay = 0, reauth_delay = 0 })
  end)
  teardown(function() m:stop() end)
  before_each(function()
    m:reset()
    m:config{ init_delay = 0, reauth_delay = 0, pacing = false }
    ft = fake_time()
    s = ibkr.new{ base_url = m.url, clock = ft.clock, sleep = ft.sleep, retries = 0 }
  end)
  after_each(function() s:close() end)

  it("counts exchanges by session endpoint and outcome; any other path is 'other'", function()
    assert(s:tickle())
    assert(s:tickle())
    m:fault{ path = "/tickle", kind = "status", status = 503, body = "" }
    assert.is_nil(s:tickle())
    m:fault{ path = "/iserver/auth/status", kind = "malformed" }
    assert.is_nil(s:auth_status())
    assert(s:request("GET", "/portfolio/accounts"))
    assert(s:request("GET", "/iserver/accounts?x=1"))
    local st = s:stats()
    assert.same({
      ["/tickle"] = { ok = 2, http_503 = 1 },
      ["/iserver/auth/status"] = { json = 1 },
      other = { ok = 2 },
    }, st.by_endpoint)
    assert.equal(6, st.requests)
    assert.equal(2, st.failures)
  end)

  it("counts a refused connection by its kind", function()
    local dead = ibkr.new{ base_url = "http://127.0.0.1:1/v1/api", retries = 0 }
    assert.is_nil(dead:tickle())
    assert.same({ ["/tickle"] = { connect = 1 } }, dead:stats().by_endpoint)
    dead:close()
  end)

  it("ages: the last success, the current state, the SSO session's remaining time", function()
    local st = s:stats()
    assert.is_nil(st.last_success_age)
    assert.is_nil(st.state)
    assert.is_nil(st.sso_expires)
    local res = assert(s:tickle())
    ft.sleep(12)
    st = s:stats()
    assert.equal(12, st.last_success_age)
    assert.equal("ready", st.state)
    assert.equal(12, st.state_age)
    assert.equal(res.ssoExpires / 1000 - 12, st.sso_expires)
    local v = assert(s:sso_validate())
    st = s:stats()
    assert.equal(v.EXPIRES / 1000, st.sso_expires)
    ft.sleep(1e6)
    assert.equal(0, s:stats().sso_expires) -- never below 0
  end)

  it("counts state changes after the first, and repair actions by name", function()
    assert.equal("ready", (s:health()))
    m:set_state("competing")
    assert.equal("competing", (s:health()))
    m:set_state("unauthenticated")
    assert(s:wait_ready{ timeout = 30, init = true })
    local st = s:stats()
    assert.equal(3, st.state_changes) -- ready -> competing -> unauthenticated -> ready
    assert.equal(1, st.repairs.init_brokerage)
    assert.is_nil(st.repairs.reauthenticate)
    m:fault{ path = "/iserver/auth/ssodh/init", kind = "status", status = 503, body = "", count = 10 }
    m:set_state("unauthenticated")
    assert(s:wait_ready{ timeout = 60, init = true }) -- ssodh/init fails: reauthenticate
    st = s:stats()
    assert.equal(2, st.repairs.init_brokerage)
    assert.equal(1, st.repairs.reauthenticate)
  end)

  it("returns a copy: changing it changes nothing", function()
    assert(s:tickle())
    local st = s:stats()
    st.by_endpoint["/tickle"].ok = 99
    st.requests = 99
    assert.equal(1, s:stats().by_endpoint["/tickle"].ok)
    assert.equal(1, s:stats().requests)
  end)

  it("fills push_connected and push_reconnects only once the push channel reports", function()
    assert.is_nil(s:stats().push_connected)
    assert.is_nil(s:stats().push_reconnects)
    s:note_push(true)
    assert.same({ true, 0 }, { s:stats().push_connected, s:stats().push_reconnects })
    s:note_push(false)
    assert.same({ false, 0 }, { s:stats().push_connected, s:stats().push_reconnects })
    s:note_push(true)
    s:note_push(true)
    assert.same({ true, 1 }, { s:stats().push_connected, s:stats().push_reconnects })
  end)
end)

describe("ibkr.metrics", function()
  local m
  setup(function()
    m = assert(mock.start{ tls = false, pacing = false, init_delay = 0, reauth_delay = 0 })
  end)
  teardown(function() m:stop() end)

  it("renders s:stats() as the Prometheus text format a real parser reads, every family announced", function()
    local s = ibkr.new{ base_url = m.url, retries = 0 }
    assert(s:tickle())
    m:fault{ path = "/tickle", kind = "status", status = 429, body = "" }
    assert.is_nil(s:tickle())
    local text = metrics.text(s:stats(), { push = true })
    s:close()
    local fams = prom.parse(text)
    assert.equal("gauge", fams.ibkr_session_state.type)
    local states = {}
    for _, smp in ipairs(fams.ibkr_session_state.samples) do states[smp.labels.state] = smp.value end
    assert.same({ ready = 1, competing = 0, unauthenticated = 0, disconnected = 0, no_session = 0,
      down = 0, tls = 0, error = 0 }, states)
    -- the parser names counters without _total
    assert.equal("counter", fams.ibkr_requests.type)
    local req = {}
    for _, smp in ipairs(fams.ibkr_requests.samples) do
      req[smp.labels.endpoint .. " " .. smp.labels.outcome] = smp.value
    end
    assert.same({ ["/tickle ok"] = 1, ["/tickle http_429"] = 1 }, req)
    assert.equal(1, fams.ibkr_rate_limited.samples[1].value)
    assert.equal(0, fams.ibkr_session_state_changes.samples[1].value)
    assert.equal(2, #fams.ibkr_repairs.samples)
    assert.is_true(fams.ibkr_sso_expires_seconds.samples[1].value > 0)
    assert.is_true(fams.ibkr_last_success_age_seconds.samples[1].value >= 0)
    assert.equal(0, fams.ibkr_push_connected.samples[1].value)
    assert.equal(0, fams.ibkr_push_reconnects.samples[1].value)
    -- each family: one # HELP line, then its # TYPE line, then its samples; no name twice
    local seen, n = {}, 0
    local lines = {}
    for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
    for i, l in ipairs(lines) do
      local name = l:match("^# HELP (%S+) ")
      if name then
        assert.is_nil(seen[name])
        seen[name], n = true, n + 1
        assert.matches("^# TYPE " .. name:gsub("%p", "%%%0") .. " %a+$", lines[i + 1])
        assert.is_truthy(lines[i + 2] == nil or lines[i + 2]:find(name, 1, true) == 1
          or lines[i + 2]:match("^# HELP"))
      end
    end
    local nfams = 0
    for _ in pairs(fams) do nfams = nfams + 1 end
    assert.equal(nfams, n)
  end)

  it("escapes label values and help texts by the format's rules", function()
    local f = metrics.family("x_total", "counter", 'help with \\ and\nnewline')
    f:add(1, { { "a", 'quote " back \\ nl \n end' } })
    f:add(2, { { "a", "plain" } })
    local g = metrics.family("y", "gauge", "h"):add(0 / 0):add(math.huge, { { "b", "inf" } })
      :add(1.5, { { "b", "f" } })
    local text = metrics.render{ f, g }
    assert.matches('x_total{a="quote \\" back \\\\ nl \\n end"} 1\n', text, 1, true)
    local fams = prom.parse(text)
    assert.equal('quote " back \\ nl \n end', fams.x.samples[1].labels.a)
    assert.equal("help with \\ and\nnewline", fams.x.documentation)
    assert.is_true(fams.y.samples[1].value ~= fams.y.samples[1].value) -- NaN
    assert.equal(math.huge, fams.y.samples[2].value)
    assert.equal(1.5, fams.y.samples[3].value)
  end)

  it("leaves out what the gateway never said and the push channel when it never ran", function()
    local fams = prom.parse(metrics.text(require("ibkr.stats").snapshot(require("ibkr.stats").new(), 0)))
    assert.is_nil(fams.ibkr_sso_expires_seconds)
    assert.is_nil(fams.ibkr_last_success_age_seconds)
    assert.is_nil(fams.ibkr_push_connected)
    assert.equal(0, fams.ibkr_requests and #fams.ibkr_requests.samples or 0)
  end)
end)
