-- ibkr-session judges what the gateway answered, not the status line (a 2xx body that says it
-- failed is a failure), shows the gateway's own texts (`fail`, `message`, `error`), and prints every
-- such text as one bounded, printable line: nothing the gateway sends forges a line or reaches the
-- terminal as a control byte. Real processes against the mock gateway.
local cjson = require("cjson")
local core = require("ibkr.core")
local gateway = require("spec.helpers.gateway")
local cli = require("spec.helpers.cli")
local run = cli.run

local TS = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ"

-- A fault answering `path` with 200 and the JSON text `body`.
local function answer(m, path, body, count)
  m:fault{ path = path, kind = "status", status = 200, body = body, count = count or 1000 }
end

local function no_control_bytes(s, what)
  local bad = s:gsub("\n", ""):find("[%z\1-\31\127]") or s:find("\194[\128-\159]")
  assert.is_nil(bad, (what or "") .. ": a control byte in " .. ("%q"):format(s))
end

describe("ibkr-session judges answers", function()
  local m
  gateway.each(function(f) m = f.m end)

  local FAILED = '{"error":"failed to process request"}'

  -- command, path, 2xx body that says the call failed, the text the user must see, exit code
  local cases = {
    { "tickle", "/tickle", FAILED, "failed to process request", 1 },
    { "tickle", "/tickle", '{"error":"no session"}', "no session", 3 },
    { "validate", "/sso/validate", '{"RESULT":false,"USER_NAME":"u1"}', "RESULT is false", 1 },
    { "validate", "/sso/validate", FAILED, "failed to process request", 1 },
    { "validate", "/sso/validate", '{"USER_NAME":"u1"}', "no RESULT in the answer", 1 },
    { "logout", "/logout", '{"status":false}', "status is false", 1 },
    { "logout", "/logout", FAILED, "failed to process request", 1 },
    { "reauthenticate", "/iserver/reauthenticate", FAILED, "failed to process request", 1 },
    { "init", "/iserver/auth/ssodh/init", FAILED, "failed to process request", 1 },
    { "init", "/iserver/auth/ssodh/init",
      '{"authenticated":false,"connected":true,"competing":false,"message":"",'
        .. '"fail":"Force compete capability must be used together with compete flag"}',
      "Force compete capability must be used together with compete flag", 1 },
    { "init", "/iserver/auth/ssodh/init", "null", "answer is null, not a JSON object", 1 },
    { "init", "/iserver/auth/ssodh/init", "5", "answer is number 5, not a JSON object", 1 },
    { "init", "/iserver/auth/ssodh/init", "true", "answer is boolean true, not a JSON object", 1 },
    { "tickle", "/tickle", '"busy"', "answer is a string, not a JSON object", 1 },
  }
  for _, c in ipairs(cases) do
    local cmd, path, body, text, code = c[1], c[2], c[3], c[4], c[5]
    it(cmd .. " answered 200 " .. body .. ": exit " .. code .. ", the gateway's text shown", function()
      answer(m, path, body)
      local rc, out, err = run{ "--url", m.url, cmd }
      assert.equal(code, rc)
      assert.not_matches(" ok", out)
      assert.not_matches("^logged out", out)
      assert.matches(text:gsub("%p", "%%%0"), out .. err)
      local rc2, js = run{ "--url", m.url, "--json", cmd }
      assert.equal(code, rc2)
      local doc = cjson.decode(js)
      assert.is_false(doc.ok)
      assert.equal(code, doc.exit)
      assert.matches(text:gsub("%p", "%%%0"), doc.error.message)
    end)
  end

  it("status shows the gateway's fail and message texts, escaped", function()
    answer(m, "/iserver/auth/status", '{"authenticated":false,"connected":true,"competing":false,'
      .. '"fail":"Session lost","message":"Please\\r\\nre-login\\u001b[0m"}')
    local rc, out = run{ "--url", m.url, "status" }
    assert.equal(1, rc)
    no_control_bytes(out)
    assert.matches('^unauthenticated %(.*fail="Session lost" '
      .. 'message="Please\\r\\nre%-login\\x1B%[0m"%)\n$', out)
  end)

  it("a text with CR/LF, escape codes, C1 controls or bad UTF-8 stays one escaped line", function()
    local evil = "failed\\r\\n2030-01-01T00:00:00Z ready (was down): forged\\u001b[2J\\u009b31m\\u0007 end"
    answer(m, "/tickle", '{"error":"' .. evil .. '"}')
    local rc, out, err = run{ "--url", m.url, "tickle" }
    assert.equal(1, rc)
    assert.equal("", out)
    no_control_bytes(err, "human")
    local lines = {}
    for l in err:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(1, #lines) -- no hint for a generic failure: the one error line
    assert.matches("^ibkr%-session: tickle failed: failed.*2030%-01%-01T00:00:00Z ready %(was down%): "
      .. "forged.*%[2J\\u{009B}31m.* end$", lines[1])
    local js
    rc, js = run{ "--url", m.url, "--json", "tickle" }
    assert.equal(1, rc)
    no_control_bytes(js, "json")
    local doc = cjson.decode(js)
    assert.matches("forged", doc.error.message)
  end)

  it("a quote or backslash in a gateway text cannot end its field or add one", function()
    answer(m, "/iserver/auth/status", '{"authenticated":false,"connected":true,"competing":false,'
      .. '"fail":"a\\\\nb\\" message=\\"forged","message":"real"}')
    local rc, out = run{ "--url", m.url, "status" }
    assert.equal(1, rc)
    assert.matches('fail="a\\\\nb\\" message=\\"forged" message="real"%)\n$', out)
    local _, fields = out:gsub(' message="', "")
    assert.equal(1, fields)
  end)

  it("request and --json print the gateway's numbers exactly", function()
    local body = '{"ts_us":1796078592916123,"max_safe":9007199254740991,"big":123456789012345678,'
      .. '"price":101.123456789012345,"sum":0.30000000000000004,"tiny":5e-324,"ids":[1,2.5,null]}'
    answer(m, "/portfolio/accounts", body)
    local want = core.decode(body)
    for _, args in ipairs{ { "request", "GET", "/portfolio/accounts" },
                           { "--json", "request", "GET", "/portfolio/accounts" } } do
      local argv = { "--url", m.url }
      for _, a in ipairs(args) do argv[#argv + 1] = a end
      local rc, out = run(argv)
      assert.equal(0, rc)
      local got = core.decode(out)
      if args[1] == "--json" then got = got.result end
      for k, v in pairs(want) do
        if type(v) ~= "table" then
          assert.equal(math.type(v), math.type(got[k]), k)
          assert.equal(v, got[k], k)
        end
      end
      assert.equal(2.5, got.ids[2])
      assert.equal(core.null, got.ids[3])
    end
  end)

  it("a number beyond a double's range still gives a JSON line and the state's exit code", function()
    answer(m, "/iserver/auth/status",
      '{"authenticated":true,"connected":true,"competing":false,"x":-1e999,"y":1e999}')
    local rc, out = run{ "--url", m.url, "--json", "status" }
    assert.equal(0, rc)
    local doc = cjson.decode(out)
    assert.equal("ready", doc.state)
    assert.equal("-Infinity", doc.result.x)
    assert.equal("Infinity", doc.result.y)
    answer(m, "/portfolio/accounts", '{"n":1e999}')
    local rc2, out2 = run{ "--url", m.url, "request", "GET", "/portfolio/accounts" }
    assert.equal(0, rc2)
    assert.equal('{"n":"Infinity"}\n', out2)
  end)

  it("a long gateway text is cut", function()
    answer(m, "/tickle", '{"error":"' .. string.rep("x", 20000) .. '"}')
    local _, _, err = run{ "--url", m.url, "tickle" }
    assert.is_true(#err < 1000, #err .. " bytes")
    assert.matches("xxx…", err, 1, true)
  end)

  it("keepalive: nothing the gateway sends forges a state line; its texts are shown escaped", function()
    local forged = "x\\r\\n2030-01-01T00:00:00Z ready (was unauthenticated): forged\\u001b]0;title\\u0007"
    answer(m, "/tickle", '{"iserver":{"authStatus":{"authenticated":false,"connected":true,'
      .. '"competing":false,"fail":"' .. forged .. '","message":"' .. forged .. '"}}}')
    local rc, out, err = run{ "--url", m.url, "keepalive", "--no-init", "--interval", "1",
      "--retry-interval", "0.3", "--duration", "1.5" }
    assert.equal(1, rc)
    no_control_bytes(out, "stdout")
    no_control_bytes(err, "stderr")
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(2, #lines) -- one state change, the last line
    assert.matches("^" .. TS .. ' unauthenticated: .* fail="x\\r\\n2030%-01%-01T00:00:00Z ready %(was '
      .. 'unauthenticated%): forged\\x1B%]0;title\\x07"', lines[1])
    assert.matches("^" .. TS .. " stopped after %-%-duration", lines[2])
  end)

  it("keepalive: failed repairs and errors are one line each, with the gateway's text", function()
    local forged = "no\\r\\n2030-01-01T00:00:00Z ready (was unauthenticated): forged\\u001b[2J"
    m:set_state("unauthenticated")
    for _, path in ipairs{ "/iserver/auth/ssodh/init", "/iserver/reauthenticate" } do
      m:fault{ path = path, kind = "status", status = 500, body = '{"error":"' .. forged .. '"}',
        count = 1000 }
    end
    local rc, out, err = run{ "--url", m.url, "keepalive", "--interval", "1", "--retry-interval", "0.3",
      "--duration", "1.5" }
    assert.equal(1, rc)
    no_control_bytes(out, "stdout")
    no_control_bytes(err, "stderr")
    for l in out:gmatch("[^\n]+") do
      assert.matches("^" .. TS .. " [%a_]+[ :]", l)
      assert.not_matches("^" .. TS .. " ready", l)
    end
    local n = 0
    for l in err:gmatch("[^\n]+") do
      n = n + 1
      assert.matches("^" .. TS .. " ", l)
      assert.is_truthy(l:find(" error: ", 1, true) or l:find(" repair: ", 1, true), l)
    end
    assert.is_true(n >= 2)
    assert.matches("repair: init_brokerage failed: .*HTTP 500.*forged", err)
  end)

  it("keepalive --json: the gateway's texts as JSON strings, every line valid", function()
    answer(m, "/tickle", '{"iserver":{"authStatus":{"authenticated":false,"connected":true,'
      .. '"fail":"a\\nb\\u001b"}}}')
    local rc, out = run{ "--url", m.url, "--json", "keepalive", "--no-init", "--duration", "1" }
    assert.equal(1, rc)
    no_control_bytes(out)
    local lines = cli.json_lines(out)
    assert.equal("a\nb\27", lines[1].detail.fail)
  end)
end)
