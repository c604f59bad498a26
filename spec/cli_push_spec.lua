-- ibkr-session watch and keepalive --push, as processes against the mock gateway: lines, JSON
-- lines, exit codes, signals.
local cli = require("spec.helpers.cli")
local mock = require("spec.helpers.mock")
local sidecar = require("spec.helpers.sidecar")
local prom = require("spec.helpers.promparse")

describe("ibkr-session watch", function()
  local gw
  before_each(function()
    gw = assert(mock.start{ pacing = false, ws_heartbeat = 0.2, ws_greeting_delay = 0 })
  end)
  after_each(function() gw:stop() end)

  it("prints each pushed message on one line, subscribing to each --topic", function()
    local p = cli.spawn{ "--url", gw.url, "watch", "--topic", "sor+{}", "--topic", "spl+{}" }
    local lines = {}
    repeat
      local l = p:line()
      lines[#lines + 1] = l
    until not l or (l:match(" spl ") and #lines > 3)
    p:kill("TERM")
    local how, code, rest = p:finish()
    assert.equal("exit", how)
    assert.equal(143, code)
    local text = table.concat(lines, "\n")
    assert.matches("Z system {.*\"success\":\"mockuser1\"", text)
    assert.matches("Z sor {.*\"conid\":265598", text)
    assert.matches("stopped by SIGTERM %(channel open, exit 143%)", rest)
    for _, l in ipairs(lines) do assert.is_nil(l:find("[%z\1-\31]")) end
  end)

  it("prints one JSON document per line with --json, and ends after --duration with 0", function()
    local rc, out = cli.run{ "--url", gw.url, "--json", "watch", "--duration", "1" }
    assert.equal(0, rc)
    local docs = cli.json_lines(out)
    assert.equal("mockuser1", docs[1].message.success)
    assert.is_true(#docs >= 3)
    local last = docs[#docs]
    assert.same({ "stopped", "duration", true, 0 }, { last.event, last.reason, last.open, last.exit })
  end)

  it("says when the channel is lost and comes back", function()
    local p = cli.spawn{ "--url", gw.url, "watch" }
    repeat local l = p:line() until not l or l:match(" sts ")
    gw:ws_drop()
    local seen = {}
    repeat
      local l = p:line()
      if l and l:match(" ibkr ") then seen[#seen + 1] = l end
    until not l or #seen == 2
    p:kill("INT")
    local _, code = p:finish()
    assert.equal(130, code)
    assert.matches("Z ibkr lost: .*GET /ws", seen[1])
    assert.matches("Z ibkr reconnected %(down [%d.]+ s, 1 attempt%)", seen[2])
  end)

  it("exits 1 after --duration when the session is ready but the channel never opened", function()
    gw:stop()
    gw = assert(mock.start{ pacing = false, ws_heartbeat = 0.2, ws_greeting_delay = 1000 })
    local rc, out = cli.run{ "--url", gw.url, "--json", "watch", "--duration", "1" }
    assert.equal(1, rc)
    local docs = cli.json_lines(out)
    local last = docs[#docs]
    assert.same({ "stopped", "duration", false, 1 }, { last.event, last.reason, last.open, last.exit })
    gw:ws_wait(function(w) return w.counters.connections >= 1 and w.counters.greeted == 0 end)
    rc, out = cli.run{ "--url", gw.url, "watch", "--duration", "1" }
    assert.equal(1, rc)
    assert.matches("stopped after %-%-duration %(channel not open, exit 1%)", out)
  end)

  it("exits 2 when the gateway cannot be reached, and 64 on usage errors", function()
    gw:stop()
    local rc = cli.run{ "--url", gw.url, "watch", "--duration", "1" }
    assert.equal(2, rc)
    gw = assert(mock.start{})
    assert.equal(64, (cli.run{ "--url", gw.url, "watch", "--topic", "" }))
    assert.equal(64, (cli.run{ "--url", gw.url, "status", "--topic", "sor+{}" }))
    assert.equal(64, (cli.run{ "--url", gw.url, "status", "--push" }))
  end)
end)

describe("ibkr-session keepalive --push", function()
  it("reports a pushed competing login with the pushed words, before any REST call", function()
    local gw <close> = assert(mock.start{ pacing = false, ws_greeting_delay = 0 })
    local p = cli.spawn{ "--url", gw.url, "keepalive", "--push", "--interval", "600" }
    assert.matches("ready", p:line())
    gw:ws_wait(function(w) return w.counters.greeted == 1 end)
    gw:set_state("competing")
    local line = p:line()
    p:kill("TERM")
    p:finish()
    -- the detail is the pushed sts (competing=true alone), not a REST status
    assert.matches("competing %(was ready%): competing=true$", line)
  end)

  it("exports the channel with --listen: ibkr_push_connected, ibkr_push_reconnects_total", function()
    local gw <close> = assert(mock.start{ pacing = false, ws_greeting_delay = 0 })
    local sc = sidecar.start(gw, { "--push" })
    local function metric(name)
      local status, _, body = sidecar.get(sc.port, "/metrics")
      assert.equal(200, status)
      local fam = prom.parse(body)[name]
      return fam and fam.samples[1] and fam.samples[1].value
    end
    gw:ws_wait(function(w) return w.counters.greeted == 1 end)
    gw:ws_drop()
    -- each event line is written in the resume that noted it, before the endpoint can answer
    sc:event("push", function(d) return d.push == "lost" end)
    assert.equal(0, metric("ibkr_push_connected"))
    sc:event("push", function(d) return d.push == "reconnected" end)
    assert.equal(1, metric("ibkr_push_connected"))
    assert.equal(1, metric("ibkr_push_reconnects"))
    sc:stop()
  end)
end)
