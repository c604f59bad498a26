-- ibkr-session keepalive --on-change CMD: the runner (ibkr/cli/alert.lua) with real commands, and
-- the command end to end against the mock gateway, its states flipped through the control API.
-- Every wait is on the runner's descriptor or on the CLI's lines, never a sleep.
local cjson = require("cjson")
local core = require("ibkr.core")
local alert = require("ibkr.cli.alert")
local drive = require("ibkr.cli.drive")
local mock = require("spec.helpers.mock")
local cli = require("spec.helpers.cli")
local sidecar = require("spec.helpers.sidecar")
local prom = require("spec.helpers.promparse")
local pids = require("spec.helpers.pids")

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- A runner whose reports are collected; pump() steps it on its descriptor until pred() holds.
local function runner(command, opts)
  local r = { said = {}, set = drive.watchers() }
  local o = { command = command, url = "https://u:secret@gw.example:5000/v1/api", set = r.set,
    say = function(ev, f) r.said[#r.said + 1] = { ev = ev, f = f } end }
  for k, v in pairs(opts or {}) do o[k] = v end
  r.run = alert.new(o)
  function r.pump(pred, limit)
    local stop = core.monotonic() + (limit or 30)
    while not pred() do
      assert(core.monotonic() < stop, "the runner did not get there")
      local t = r.run:timeout()
      local fd = r.run:pollfd()
      core.poll(fd and { fd } or {}, t and math.min(t, 5) or 5)
      r.run:step()
    end
  end
  function r.events(name)
    local t = {}
    for _, e in ipairs(r.said) do if e.ev == name then t[#t + 1] = e.f end end
    return t
  end
  return r
end

describe("the --on-change runner", function()
  it("runs each change's command one at a time, in order, with the change in its environment", function()
    local file = os.tmpname()
    local r = runner('printf "%s>%s|%s|%s|%s\\n" "$IBKR_PREVIOUS_STATE" "$IBKR_STATE" "$IBKR_DETAIL" '
      .. '"$IBKR_URL" "$IBKR_TIME" >> ' .. file .. '; sleep 0.05')
    r.run:change("ready", nil, "authenticated=true")
    r.run:change("competing", "ready", "line one\nline two\27[31m")
    r.run:change("down", "competing", ("x"):rep(5000))
    assert.equal(3, r.run:queued()) -- nothing starts inside change(): the next step does
    r.pump(function() return #r.events("done") == 3 end)
    local lines = {}
    for l in slurp(file):gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(3, #lines)
    assert.matches("^>ready|authenticated=true|https://gw.example:5000/v1/api|%d%d%d%d%-%d%d%-%d%dT[%d:]+Z$",
      lines[1])
    assert.matches("^ready>competing|line one line two\\x1B%[31m|", lines[2])
    local detail = lines[3]:match("^competing>down|([^|]*)|")
    assert.is_true(#detail <= alert.DETAIL_MAX, #detail) -- cut, with "…"
    for _, d in ipairs(r.events("done")) do assert.equal("ok", d.outcome) end
    assert.same({ "ready", "competing", "down" },
      { r.events("done")[1].state, r.events("done")[2].state, r.events("done")[3].state })
    os.remove(file)
  end)

  it("IBKR_DETAIL is one printable line of at most DETAIL_MAX bytes, cut between characters and escapes",
    function()
    local file = os.tmpname()
    local r = runner('printf "%s\\n" "$IBKR_DETAIL" >> ' .. file)
    -- multi-byte characters, escapes and a line break at every offset around the cut
    local tails = { "\u{20AC}\u{20AC}\u{20AC}\u{20AC}", "\1\2\3\27[31m\127", "\xff\xfe\xc3",
      "\u{1F600}\u{1F600}\u{202E}\u{2028}x", "\u{e9}\n\u{e9}\r\t\u{e9}" }
    local sent = {}
    for _, tail in ipairs(tails) do
      for pad = alert.DETAIL_MAX - 24, alert.DETAIL_MAX + 2 do
        sent[#sent + 1] = ("d"):rep(pad) .. tail .. ("z"):rep(50)
      end
    end
    for i, d in ipairs(sent) do                -- one at a time: the queue keeps QUEUE_MAX
      r.run:change(i % 2 == 0 and "ready" or "down", nil, d)
      r.pump(function() return #r.events("done") == i end)
    end
    local lines = {}
    for l in slurp(file):gmatch("[^\n]*\n") do lines[#lines + 1] = l:sub(1, -2) end
    os.remove(file)
    assert.equal(#sent, #lines)
    for i, l in ipairs(lines) do
      assert.is_true(#l <= alert.DETAIL_MAX, i .. ": " .. #l .. " bytes")
      assert.truthy(utf8.len(l), i)                           -- whole UTF-8 characters
      assert.is_nil(l:find("[%z\1-\31\127]"), i)             -- no control byte: one line
      assert.matches("\u{2026}$", l)                          -- every one was cut
      local kept = l:sub(1, -1 - #"\u{2026}")
      assert.is_nil(kept:find("\\x?%x?$"), i)                 -- no escape cut short at the end
      assert.is_nil(kept:find("\\u{%x*$"), i)
    end
  end)

  it("keeps at most QUEUE_MAX changes waiting: the oldest are dropped and counted", function()
    local file = os.tmpname()
    local r = runner('echo "$IBKR_STATE" >> ' .. file)
    for i = 1, alert.QUEUE_MAX + 4 do r.run:change("s" .. i, "s" .. (i - 1), "") end
    local dropped = r.events("dropped")
    assert.equal(4, #dropped)
    assert.same({ "s1", 1 }, { dropped[1].state, dropped[1].dropped })
    assert.same({ "s4", 4 }, { dropped[4].state, dropped[4].dropped })
    r.pump(function() return #r.events("done") == alert.QUEUE_MAX end)
    local want = {}
    for i = 5, alert.QUEUE_MAX + 4 do want[#want + 1] = "s" .. i end
    assert.equal(table.concat(want, "\n") .. "\n", slurp(file))
    assert.equal(4, r.run.counts.dropped)
    os.remove(file)
  end)

  it("reports a non-zero exit and output, line by line, each stream apart", function()
    local r = runner('echo one; echo two >&2; printf "no newline"; exit 3')
    r.run:change("ready", nil, "")
    r.pump(function() return #r.events("done") == 1 end)
    local d = r.events("done")[1]
    assert.same({ "failed", 3 }, { d.outcome, d.exit })
    local got = {}
    for _, o in ipairs(r.events("output")) do got[#got + 1] = o.stream .. ":" .. o.line end
    table.sort(got)
    assert.same({ "stderr:two", "stdout:no newline", "stdout:one" }, got)
    assert.equal(1, r.run.counts.failed)
  end)

  it("passes at most OUTPUT_MAX bytes of a run that prints megabytes, long lines in pieces, and "
    .. "still sees it end", function()
    local r = runner("head -c 3000000 /dev/zero | tr '\\0' x; echo; yes | head -c 2000000")
    r.run:change("ready", nil, "")
    r.pump(function() return #r.events("done") == 1 end)
    assert.equal("ok", r.events("done")[1].outcome)
    local bytes = 0
    for _, o in ipairs(r.events("output")) do
      assert.is_true(#o.line <= alert.LINE_MAX)
      bytes = bytes + #o.line + 1
    end
    assert.is_true(bytes <= alert.OUTPUT_MAX + alert.LINE_MAX)
    assert.equal(alert.LINE_MAX, #r.events("output")[1].line)
    assert.equal(1, #r.events("cut"))
  end)

  it("a command that forks a daemon holding its output is done when its shell is", function()
    local pidfile = os.tmpname()
    local r = runner("sleep 60 & echo $! >> " .. pidfile .. "; echo forked")
    r.run:change("ready", nil, "")
    r.run:change("down", "ready", "")
    r.pump(function() return #r.events("done") == 2 end)
    assert.same({ "ok", "ok" }, { r.events("done")[1].outcome, r.events("done")[2].outcome })
    for pid in slurp(pidfile):gmatch("%d+") do os.execute("kill " .. pid) end
    os.remove(pidfile)
  end)

  it("kills a run over its time with its whole process group, TERM ignored or not, and goes on", function()
    local pidfile = os.tmpname()
    -- ignores SIGTERM, and so does its child (the disposition is inherited)
    local r = runner("trap '' TERM; sleep 60 & echo $! > " .. pidfile .. "; echo started; wait",
      { timeout = 0.3, grace = 0.5 })
    r.run:change("ready", nil, "")
    r.run:change("down", "ready", "")
    r.pump(function() return #r.events("output") >= 1 end)
    local child = slurp(pidfile):match("%d+")
    local _, _, started = pids.stat(child)
    r.pump(function() return #r.events("done") >= 1 end)
    local d = r.events("done")[1]
    assert.same({ "killed", 9, 0.3 }, { d.outcome, d.signal, d.timeout })
    -- the group's other member: gone (or a zombie, or its pid taken by another process)
    assert.is_true(pids.gone(child, started))
    assert.equal(1, r.run.counts.killed)
    -- the next change still runs (and is killed in its turn)
    r.pump(function() return #r.events("done") == 2 end)
    os.remove(pidfile)
  end)

  it("at the end, a running command is ended with its group and queued changes are said dropped", function()
    local r = runner("sleep 60")
    r.run:change("ready", nil, "")
    r.run:step()
    r.run:change("down", "ready", "")
    r.run:change("ready", "down", "")
    assert.is_number(r.run:pollfd())
    r.run:close()
    local d = r.events("done")[1]
    assert.same({ "killed", true }, { d.outcome, d.at_exit })
    local dropped = r.events("dropped")
    assert.same({ 2, 2 }, { dropped[#dropped].at_exit, dropped[#dropped].dropped })
    assert.equal(0, r.set:count())
  end)
end)

describe("ibkr-session keepalive --on-change", function()
  local gw
  setup(function() gw = assert(mock.start{ tls = true }) end)
  teardown(function() gw:stop() end)
  before_each(function() gw:reset() end)

  it("runs the command on every state change with the change in its environment, credentials removed",
    function()
    local file = os.tmpname()
    local url = gw.url:gsub("^https://", "https://user:secret@")
    local sc = sidecar.start({ url = url }, { "--on-change",
      'printf "%s>%s|%s|%s\\n" "$IBKR_PREVIOUS_STATE" "$IBKR_STATE" "$IBKR_DETAIL" "$IBKR_URL" >> ' .. file })
    sc:event("on_change", function(d) return d.for_state == "ready" end)
    gw:set_state("competing")
    sc:event("on_change", function(d) return d.for_state == "competing" end)
    -- a gateway text with a line break and an escape sequence
    gw:fault{ path = "/tickle", kind = "status", status = 200, body = { iserver = { authStatus = {
      authenticated = false, connected = true, competing = false, fail = "bad\nthing\27[31m" } } } }
    local d = sc:event("on_change", function(x) return x.for_state == "unauthenticated" end)
    assert.same({ "ok", 0, "competing" }, { d.outcome, d.exit, d.previous })
    sc:stop()
    local lines = {}
    for l in slurp(file):gmatch("[^\n]*\n") do lines[#lines + 1] = l end
    assert.equal(3, #lines)
    assert.matches("^>ready|authenticated=true connected=true", lines[1])
    assert.matches("^ready>competing|.*competing=true", lines[2])
    assert.matches('^competing>unauthenticated|.*fail="bad\\nthing\\x1B%[31m"', lines[3])
    local shown = gw.url
    for _, l in ipairs(lines) do
      assert.equal(shown, l:match("|([^|]*)\n$"))
      assert.is_nil(l:find("secret", 1, true))
    end
    os.remove(file)
  end)

  it("passes its output through, reports a failure on its own line, and counts runs in /metrics", function()
    local sc = sidecar.start(gw, { "--on-change", 'echo "hello $IBKR_STATE"; echo oops >&2; exit 3' })
    local o1 = sc:event("on_change_output")
    local o2 = sc:event("on_change_output")
    local byst = { [o1.stream] = o1.line, [o2.stream] = o2.line }
    assert.same({ stdout = "hello ready", stderr = "oops" }, byst)
    local d = sc:event("on_change")
    assert.same({ "failed", 3, "ready", "ready" }, { d.outcome, d.exit, d.for_state, d.state })
    local _, _, body = sidecar.get(sc.port, "/metrics")
    local fams = prom.parse(body)
    local runs = {}
    for _, smp in ipairs(fams.ibkr_on_change_runs.samples) do runs[smp.labels.outcome] = smp.value end
    assert.same({ ok = 0, failed = 1, killed = 0, error = 0 }, runs)
    assert.equal(0, fams.ibkr_on_change_dropped.samples[1].value)
    sc:stop()
  end)

  it("in human mode, prefixes the command's lines on stdout and stderr and says a failure", function()
    local p = cli.spawn{ "--url", gw.url, "keepalive", "--duration", "60", "--interval", "1",
      "--on-change", 'echo "hello $IBKR_STATE"; echo oops >&2; exit 3' }
    local done
    finally(function() if not done then p:kill("KILL") p:finish() end end)
    assert.matches("Z ready: authenticated=true", p:line())
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ on%-change: hello ready$", p:line())
    -- the next change's command runs once the first has ended (and been reported)
    gw:set_state("competing")
    assert.matches("Z competing %(was ready%)", p:line())
    assert.matches("Z on%-change: hello competing$", p:line())
    p:kill("TERM")
    done = true
    local _, code, _, err = p:finish()
    assert.equal(143, code)
    assert.matches("Z on%-change: oops\n", err)
    assert.matches("Z on%-change: exited with status 3 %(for ready%)\n", err)
  end)

  it("kills a command over --on-change-timeout and says so; the keep-alive goes on", function()
    local sc = sidecar.start(gw, { "--on-change", "sleep 60", "--on-change-timeout", "0.5" })
    local d = sc:event("on_change")
    assert.same({ "killed", 15 }, { d.outcome, d.signal }) -- SIGTERM ended it (its group)
    local n = #gw:api_log("/tickle")
    gw:set_state("competing")
    sc:event("state", function(x) return x.state == "competing" end)
    assert.is_true(#gw:api_log("/tickle") > n)
    sc:stop()
  end)

  it("refuses an empty command and a timeout without a command", function()
    local rc, _, err = cli.run{ "--url", gw.url, "keepalive", "--on-change", "" }
    assert.equal(64, rc)
    assert.matches("--on-change needs a command", err, 1, true)
    rc, _, err = cli.run{ "--url", gw.url, "keepalive", "--on-change-timeout", "5" }
    assert.equal(64, rc)
    assert.matches("--on-change-timeout goes with --on-change", err, 1, true)
    rc, _, err = cli.run{ "--url", gw.url, "status", "--on-change", "true" }
    assert.equal(64, rc)
    assert.matches("does not apply to status", err, 1, true)
  end)

  it("JSON lines of the runner are valid JSON even for output that is not UTF-8", function()
    local sc = sidecar.start(gw, { "--on-change", "printf 'a\\377b\\033[31m\\n'" })
    local o = sc:event("on_change_output")
    assert.equal("a\239\191\189b\27[31m", o.line)
    sc:stop()
    assert.is_table(cjson.decode(sc.lines[#sc.lines]))
  end)
end)
