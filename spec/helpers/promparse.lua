-- A real Prometheus parser for the specs: Debian's python3-prometheus-client
-- (prometheus_client.parser.text_string_to_metric_families), run as a child process on a text.
--   prom.parse(text) -> { [family name] = { type=, documentation=, samples = { {name=, labels=, value=} } } }
-- Raises (failing the spec) when the parser refuses the text. Family names are the parser's: a
-- counter `x_total` is the family `x`. Debian's python3 is used by its path: a python3 found first
-- on PATH (pyenv, a virtualenv) may not have the package.
local cjson = require("cjson")

local M = {}

M.PYTHON = os.getenv("IBKR_PYTHON") or "/usr/bin/python3"

local SCRIPT = [[
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(open(sys.argv[1], encoding="utf-8").read()):
    if f.name in out:
        raise SystemExit("family announced twice: " + f.name)
    out[f.name] = {"type": f.type, "documentation": f.documentation,
                   "samples": [{"name": s.name, "labels": s.labels, "value": repr(float(s.value))}
                               for s in f.samples]}
print(json.dumps(out))
]]

local function number(v)
  if v == "nan" then return 0 / 0 end
  if v == "inf" then return math.huge end
  if v == "-inf" then return -math.huge end
  local n = assert(tonumber(v), "not a number: " .. tostring(v))
  if n == math.floor(n) and math.abs(n) < 2 ^ 53 then return math.tointeger(n) end
  return n
end

function M.parse(text)
  local tf, sf = os.tmpname(), os.tmpname()
  local f = assert(io.open(tf, "wb"))
  f:write(text)
  f:close()
  f = assert(io.open(sf, "w"))
  f:write(SCRIPT)
  f:close()
  -- (never under the sanitizer preload of make asan: python is not what is checked)
  local p = assert(io.popen("env -u LD_PRELOAD " .. M.PYTHON .. " " .. sf .. " " .. tf .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  os.remove(tf)
  os.remove(sf)
  assert(ok, "the Prometheus parser refused the text: " .. out .. "\n--- text:\n" .. text)
  local fams = cjson.decode(out)
  for _, fam in pairs(fams) do
    for _, smp in ipairs(fam.samples) do smp.value = number(smp.value) end
  end
  return fams
end

return M
