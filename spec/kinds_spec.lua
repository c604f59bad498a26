-- The registry of error kinds (ibkr/kinds.lua): every kind the library and the core can produce
-- is in it, docs/ibkr.md's table of kinds is exactly what it says, and the modules that used to
-- decide a kind's meaning themselves now answer with the registry's functions. No network.
local kinds = require("ibkr.kinds")
local core = require("ibkr.core")

local function read(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

describe("the registry of error kinds", function()
  it("is what docs/ibkr.md's table of kinds says, row for row", function()
    local doc = read("docs/ibkr.md")
    local rows = kinds.doc_rows()
    local block = table.concat(rows, "\n") .. "\n"
    assert.truthy(doc:find(block, 1, true), "docs/ibkr.md lacks the table of kinds as ibkr.kinds makes it:\n"
      .. block)
    -- no other row of that table names a kind
    local start = doc:find(block, 1, true)
    local after = doc:sub(start + #block):match("^(|[^\n]*\n)")
    assert.is_nil(after, "a row after the table: " .. tostring(after))
    for _, name in ipairs(kinds.ORDER) do assert.is_table(kinds.KINDS[name], name) end
    for name in pairs(kinds.KINDS) do
      local listed = false
      for _, n in ipairs(kinds.ORDER) do listed = listed or n == name end
      assert.is_true(listed, name .. " is not in kinds.ORDER (the docs' table)")
    end
  end)

  it("has every kind the Lua layer writes (kind = \"...\" in lua/ibkr, the mock aside)", function()
    local p = assert(io.popen("ls lua/ibkr/*.lua lua/ibkr/cli/*.lua | grep -v '^lua/ibkr/mock.lua$'"))
    local seen = 0
    for file in p:lines() do
      for kind in read(file):gmatch('kind%s*=%s*"([%w_]+)"') do
        seen = seen + 1
        -- the CLI's own report kinds are not error objects of the library
        local cli_own = file:find("/cli", 1, true)
          and (kind == "usage" or kind == "interrupted" or kind == "answer")
        if not cli_own then
          assert.is_table(kinds.KINDS[kind], file .. " makes kind " .. kind .. " the registry does not know")
        end
      end
    end
    p:close()
    assert.is_true(seen > 5)
  end)

  if core.kinds then -- a core that lists the kinds it can produce
    it("has every kind the C core can produce (core.kinds)", function()
      for k, v in pairs(core.kinds) do
        local name = type(k) == "string" and k or v
        assert.is_table(kinds.KINDS[name], "core kind " .. tostring(name) .. " is not in the registry")
      end
    end)
  end

  it("is the one answer: state, retry and the CLI read it", function()
    local state = require("ibkr.state")
    local retry = require("ibkr.retry")
    local hints = require("ibkr.cli.hints")
    local report = require("ibkr.cli.report")
    assert.equal(kinds.state, state.of_error)
    assert.equal(kinds.says_wait, state.says_wait)
    assert.equal(kinds.exit_code, state.exit_code)
    assert.equal(kinds.retryable, retry.retryable)
    assert.equal(kinds.hint, hints.for_error)
    assert.equal(kinds.state_hint, hints.for_state)
    assert.equal(kinds.exit_code, report.code_of_state)
    assert.equal(kinds.exit, report.code_of_error)
  end)

  it("gives a state and an exit code for every kind, and unknown kinds are errors", function()
    for name in pairs(kinds.KINDS) do
      local err = core.error{ kind = name, message = "x" }
      local st = kinds.state(err)
      assert.is_string(st, name)
      assert.is_table(kinds.STATES[st], name .. " -> " .. st)
      assert.is_number(kinds.exit(err))
      assert.is_boolean(kinds.retryable(err))
    end
    assert.equal("error", kinds.state(core.error{ kind = "something_new", message = "x" }))
    assert.is_false(kinds.retryable(core.error{ kind = "something_new", message = "x" }))
  end)
end)
