-- ibkr-session keepalive --listen: /livez, /readyz and /metrics against the mock gateway, its
-- states flipped through the control API; /metrics read by a real Prometheus parser.
local cjson = require("cjson")
local socket = require("socket")
local mock = require("spec.helpers.mock")
local cli = require("spec.helpers.cli")
local sidecar = require("spec.helpers.sidecar")
local prom = require("spec.helpers.promparse")

local get = sidecar.get

local function metrics_of(port)
  local status, h, body = get(port, "/metrics")
  assert.equal(200, status)
  assert.equal("text/plain; version=0.0.4; charset=utf-8", h["content-type"])
  return prom.parse(body), body
end

local function value(fams, name, labels)
  for _, smp in ipairs(fams[name] and fams[name].samples or {}) do
    local match = true
    for k, v in pairs(labels or {}) do if smp.labels[k] ~= v then match = false end end
    if match then return smp.value end
  end
  return nil
end

describe("ibkr-session keepalive --listen", function()
  local gw
  setup(function() gw = assert(mock.start{ tls = true, init_delay = 0, reauth_delay = 0 }) end)
  teardown(function() gw:stop() end)
  before_each(function() gw:reset() end)

  it("answers /livez, /readyz and /metrics; HEAD; 404 elsewhere; 405 for other methods", function()
    local sc = sidecar.start(gw)
    assert.equal("ready", sc.first.state)
    assert.equal("http://127.0.0.1:" .. sc.port, sc.url)
    local status, h, body = get(sc.port, "/livez")
    assert.same({ 200, "application/json", { live = true } },
      { status, h["content-type"], cjson.decode(body) })
    status, h, body = get(sc.port, "/readyz")
    assert.equal("no-store", h["cache-control"])
    assert.equal(200, status)
    local doc = cjson.decode(body)
    assert.equal("ready", doc.state)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", doc.since)
    assert.matches("authenticated=true", doc.detail)
    local fams = metrics_of(sc.port)
    assert.equal(1, value(fams, "ibkr_session_state", { state = "ready" }))
    assert.equal(0, value(fams, "ibkr_session_state", { state = "down" }))
    assert.is_true(value(fams, "ibkr_requests", { endpoint = "/tickle", outcome = "ok" }) >= 1)
    assert.is_true(value(fams, "ibkr_sso_expires_seconds") > 0)
    assert.is_true(value(fams, "ibkr_last_success_age_seconds") >= 0)
    assert.equal(0, value(fams, "ibkr_repairs", { action = "init_brokerage" }))
    assert.is_number(value(fams, "ibkr_rate_limited"))
    assert.is_number(value(fams, "ibkr_session_state_changes"))
    assert.is_nil(fams.ibkr_push_connected) -- no --push
    -- HEAD: the same head, no body
    local gs, gh = get(sc.port, "/readyz")
    local hs, hh, hb = get(sc.port, "/readyz", "HEAD")
    assert.same({ gs, gh["content-length"], "" }, { hs, hh["content-length"], hb })
    assert.equal(404, (get(sc.port, "/")))
    assert.equal(404, (get(sc.port, "/metrics/")))
    assert.equal(404, (get(sc.port, "/nope", "POST")))
    local ps, ph = get(sc.port, "/metrics", "POST", "Content-Length: 0\r\n")
    assert.same({ 405, "GET, HEAD" }, { ps, ph.allow })
    assert.equal(405, (get(sc.port, "/livez", "DELETE")))
    local how, code = sc:stop()
    assert.same({ "exit", 143 }, { how, code })
  end)

  it("/readyz and the state metric follow the session: 503 with the state, since and detail", function()
    local sc = sidecar.start(gw)
    gw:set_state("competing")
    sc:event("state", function(d) return d.state == "competing" end)
    local status, _, body = get(sc.port, "/readyz")
    assert.equal(503, status)
    local doc = cjson.decode(body)
    assert.equal("competing", doc.state)
    assert.matches("competing=true", doc.detail)
    local fams = metrics_of(sc.port)
    assert.equal(1, value(fams, "ibkr_session_state", { state = "competing" }))
    assert.equal(0, value(fams, "ibkr_session_state", { state = "ready" }))
    assert.equal(1, value(fams, "ibkr_session_state_changes"))
    gw:set_state("ready")
    sc:event("state", function(d) return d.state == "ready" end)
    assert.equal(200, (get(sc.port, "/readyz")))
    assert.equal(2, value(metrics_of(sc.port), "ibkr_session_state_changes"))
    sc:stop()
  end)

  it("/readyz's since is the time of the state's line, the same at every scrape", function()
    local sc = sidecar.start(gw)
    local function scrape_for(state, stamp)
      -- scrapes for 1.2 s of the clock: a second boundary passes, as between two real scrapes
      local stop, n = socket.gettime() + 1.2, 0
      repeat
        local status, _, body = get(sc.port, "/readyz")
        local doc = cjson.decode(body)
        assert.same({ state, stamp }, { doc.state, doc.since })
        assert.equal(state == "ready" and 200 or 503, status)
        n = n + 1
      until socket.gettime() > stop
      assert.is_true(n > 1)
    end
    scrape_for("ready", sc.first.time)
    gw:set_state("competing")
    local ev = sc:event("state", function(d) return d.state == "competing" end)
    scrape_for("competing", ev.time)
    sc:stop()
  end)

  it("counts repairs and never lets a counter go down between scrapes", function()
    local sc = sidecar.start(gw)
    local before = metrics_of(sc.port)
    gw:set_state("unauthenticated")
    sc:event("state", function(d) return d.state == "unauthenticated" end)
    sc:event("state", function(d) return d.state == "ready" end) -- repaired by ssodh/init
    local after = metrics_of(sc.port)
    assert.equal(1, value(after, "ibkr_repairs", { action = "init_brokerage" }))
    for name, fam in pairs(before) do
      if fam.type == "counter" then
        for _, smp in ipairs(fam.samples) do
          local later = value(after, name, smp.labels)
          assert.is_true(later ~= nil and later >= smp.value, name)
        end
      end
    end
    sc:stop()
  end)

  it("every JSON line carries its time, event and the current state", function()
    local sc = sidecar.start(gw)
    gw:set_state("competing")
    sc:event("state", function(d) return d.state == "competing" end)
    gw:fault{ path = "/tickle", kind = "status", status = 500, body = "", count = 1 }
    local e = sc:event("state", function(d) return d.state == "error" end)
    assert.same({ "http", 500 }, { e.error.kind, e.error.status })
    sc:event("state", function(d) return d.state == "competing" end)
    sc:stop()
    for _, doc in ipairs(sc.seen) do
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", doc.time)
      assert.is_string(doc.event)
      if doc.event ~= "listening" then assert.is_string(doc.state, doc.event) end
    end
    local last = sc.seen[#sc.seen]
    assert.same({ "stopped", "competing", 143 }, { last.event, last.state, last.exit })
    local changed
    for _, doc in ipairs(sc.seen) do if doc.event == "state" and doc.old == "ready" then changed = doc end end
    assert.is_number(changed.seconds) -- how long the old state lasted
  end)

  it("/livez says 503 when the keep-alive was not resumed on time (the process was stopped), then 200",
    function()
    local sc = sidecar.start(gw)
    assert.equal(200, (get(sc.port, "/livez")))
    os.execute("kill -STOP " .. sc.pid)
    -- the scenario itself is time: the stopped keep-alive misses its 1 s interval by more than 2 s
    socket.sleep(3.5)
    os.execute("kill -CONT " .. sc.pid)
    local status, _, body = get(sc.port, "/livez")
    assert.equal(503, status)
    local doc = cjson.decode(body)
    assert.is_false(doc.live)
    -- overdue now (answered before the loop resumed the keep-alive), or resumed late just now
    assert.is_true((doc.overdue or doc.late) > 2, body)
    -- then on time again, once the late resume is LATE_MEMORY (10 s) old: ask until it says so
    local stop = socket.gettime() + 30
    repeat
      socket.select(nil, nil, 0.5)
      status = get(sc.port, "/livez")
    until status == 200 or socket.gettime() > stop
    assert.equal(200, status)
    sc:stop()
  end)

  it("listens on IPv6 loopback when asked ([::1]:PORT)", function()
    local probe = socket.tcp6 and socket.tcp6()
    if not (probe and probe:bind("::1", 0)) then
      pending("no IPv6 loopback here")
      return
    end
    probe:close()
    local p = cli.spawn({ "--url", gw.url, "--json", "keepalive", "--listen", "[::1]:0", "--duration", "60" })
    finally(function() p:kill("KILL") p:finish() end)
    local l = cjson.decode(p:line())
    assert.equal("listening", l.event)
    assert.equal("::1", l.address)
    local port = math.tointeger(l.port)
    assert.equal("http://[::1]:" .. port, l.url)
    assert.equal(200, (get(port, "/livez", nil, nil, "::1")))
  end)

  it("refuses a bad --listen, a port in use, and says what to install when luasocket is missing", function()
    for _, bad in ipairs{ "x", ":9100", "1.2.3.4:", "70000", "[::1]", "host:port" } do
      local rc, out, err = cli.run{ "--url", gw.url, "keepalive", "--listen", bad }
      assert.equal(64, rc, bad)
      assert.equal("", out)
      assert.matches("--listen", err)
    end
    local taken = assert(socket.bind("127.0.0.1", 0))
    local _, port = taken:getsockname()
    local rc, out = cli.run{ "--url", gw.url, "--json", "keepalive", "--listen", tostring(port) }
    taken:close()
    assert.equal(64, rc)
    local doc = cjson.decode(out)
    assert.matches("cannot listen", doc.error.message)
    -- a Lua path with the checkout only: no luasocket
    local err
    rc, _, err = cli.run({ "--url", gw.url, "keepalive", "--listen", "0" },
      "LUA_PATH_5_4='lua/?.lua;lua/?/init.lua' LUA_CPATH_5_4='./?.so'")
    assert.equal(64, rc)
    assert.matches("--listen needs luasocket (Debian: lua-socket)", err, 1, true)
    -- without --listen the same installation keeps the session alive
    local p = cli.spawn({ "--url", gw.url, "keepalive", "--duration", "60" },
      "LUA_PATH_5_4='lua/?.lua;lua/?/init.lua' LUA_CPATH_5_4='./?.so'")
    assert.matches("Z ready: authenticated=true", p:line())
    p:kill("TERM")
    assert.equal(143, select(2, p:finish()))
  end)
end)

-- A full listener makes room for a new client by closing the connection that has waited longest
-- for a request — never one whose request has arrived and is not read yet: that one is answered
-- first. The listener on its own (no loop), raw clients on 127.0.0.1; each step is taken once
-- the kernel says its bytes or connection are there.
describe("the --listen endpoint when full", function()
  local core = require("ibkr.core")
  local listen = require("ibkr.cli.listen")

  local function readable(fd)
    assert.same({ 1 }, { core.poll({ fd }, 10, { "r" }) }, "nothing arrived")
  end

  it("answers a client whose request arrived, and evicts an idle one instead", function()
    local set = require("ibkr.cli.drive").watchers()
    local l = assert(listen.new{ host = "127.0.0.1", port = 0, set = set,
      answer = function() return 200, { { "Content-Type", "text/plain" } }, "ok\n" end,
      limits = { max_connections = 2 } })
    local function connect()
      local c = assert(socket.connect("127.0.0.1", l.port))
      readable(l:pollfd())
      l:step()
      return c
    end
    local first = connect()
    local idle = connect()
    assert.equal(2, l.nconns)
    -- the first client's request arrives; the listener has not read it when the third connects
    assert(first:send("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"))
    local conn_of_first
    for c in pairs(l.conns) do if c.turn == 1 then conn_of_first = c end end -- accepted first
    readable(conn_of_first.fd)
    local third = connect()
    first:settimeout(10)
    assert.equal("HTTP/1.1 200 OK", first:receive("*l"))
    idle:settimeout(10)
    assert.equal("closed", select(2, idle:receive("*l"))) -- the one that waited for nothing
    assert.equal(1, l.counts.evicted)
    assert.equal(2, l.nconns)
    first:close(); idle:close(); third:close()
    l:close()
  end)
end)
