-- ibkr-session's command line as a user meets it: every usage error ends with exit 64, a usage line
-- on stderr (with --json: one JSON line on stdout, nothing on stderr); --help, -h and --version.
-- Real processes; nothing here needs a gateway. (Commands against one: cli_spec.lua.)
local cjson = require("cjson")
local cli = require("spec.helpers.cli")
local run = cli.run

describe("ibkr-session's command line", function()
  it("exit 64 on usage errors; with --json the error is a JSON line", function()
    local cases = {
      {}, { "bogus" }, { "--bogus", "status" }, { "status", "extra" }, { "--url" },
      { "--insecure", "--cacert", "x.pem", "status" }, { "-k", "--cacert", "x.pem", "status" },
      { "--timeout", "abc", "status" }, { "--retries", "-1", "status" }, { "--retries", "1.5", "status" },
      { "--timeout", "0", "status" }, { "status", "--interval", "5" }, { "tickle", "--compete" },
      { "status", "--init" }, { "status", "--no-init" }, { "init", "--data", "{}" },
      { "--url", "ftp://x", "status" }, { "--url", "https:///v1/api", "status" },
      { "keepalive", "--duration", "-1" }, { "keepalive", "--retry-interval", "0" },
      { "request", "GET" }, { "request", "GET", "nopath" }, { "request", "G/T", "/x" },
      { "request", "POST", "/x", "--data", "{bad" }, { "request", "GET", "/x", "--data", "{}" },
      { "request", "head", "/x", "--data", "{}" },
      { "--url", "http://127.0.0.1:9/v1/api", "request", "GET", "/a b" },
      { "--url", "http://127.0.0.1:9/v1/api", "request", "GET", "/a\r\nX: y" },
    }
    for _, args in ipairs(cases) do
      local rc, out, err = run(args)
      assert.equal(64, rc, table.concat(args, " "))
      assert.equal("", out)
      assert.matches("usage: ibkr%-session", err)
      local args2 = { "--json" }
      for _, a in ipairs(args) do args2[#args2 + 1] = a end
      local rc2, js, err2 = run(args2)
      assert.equal(64, rc2)
      local doc = cjson.decode(js)
      assert.equal("usage", doc.error.kind)
      assert.equal(64, doc.exit)
      assert.equal("", err2)
    end
  end)

  it("--help, -h, --version", function()
    for _, h in ipairs{ "--help", "-h" } do
      local rc, out = run{ h }
      assert.equal(0, rc)
      assert.matches("keepalive", out)
      assert.matches("\n  3   login required", out)
      assert.matches("\n  64  usage error", out)
    end
    local rc, out = run{ "--version" }
    assert.equal(0, rc)
    assert.matches("^ibkr%-session %d+%.%d+%.%d+ ", out)
    local version = require("ibkr")._VERSION
    assert.equal(version, cjson.decode((select(2, run{ "--json", "--version" }))).version)
  end)
end)
