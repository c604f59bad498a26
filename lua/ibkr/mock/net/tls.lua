-- TLS for the mock gateway: a luasec server context from given PEM files, or from a fresh
-- self-signed EC certificate (CN=localhost, SAN localhost, 127.0.0.1, ::1) made with the
-- openssl command in a temporary directory that is removed before serving starts.
local tls = {}

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

function tls.context(cert, key)
  local ok, ssl = pcall(require, "ssl")
  if not ok then
    return nil, "TLS needs luasec (module 'ssl'): " .. tostring(ssl)
  end
  local ctx, err = ssl.newcontext({
    mode = "server",
    protocol = "any",
    key = key,
    certificate = cert,
    options = { "all", "no_sslv2", "no_sslv3", "no_tlsv1", "no_tlsv1_1" },
  })
  if not ctx then
    return nil, "cannot load certificate/key: " .. tostring(err)
  end
  return ctx
end

-- Generates a self-signed certificate and returns a context, or nil, err.
function tls.self_signed(openssl)
  openssl = openssl or os.getenv("OPENSSL") or "openssl"
  local script = table.concat({
    "d=$(mktemp -d 2>/dev/null) || exit 1",
    shell_quote(openssl) .. " req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
      .. " -keyout \"$d/key.pem\" -out \"$d/cert.pem\" -days 3650 -subj /CN=localhost"
      .. " -addext subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1 >\"$d/err\" 2>&1"
      .. " || { cat \"$d/err\"; rm -rf \"$d\"; exit 1; }",
    "rm -f \"$d/err\"",
    "echo \"$d\"",
  }, "; ")
  local p = io.popen("sh -c " .. shell_quote(script) .. " 2>&1", "r")
  if not p then
    return nil, "cannot run openssl"
  end
  local out = p:read("a")
  local ok = p:close()
  local dir = out:match("^(/[^\n]+)\n$")
  if not ok or not dir then
    return nil, "openssl failed: " .. out:gsub("%s+$", "")
  end
  local ctx, err = tls.context(dir .. "/cert.pem", dir .. "/key.pem")
  os.remove(dir .. "/cert.pem")
  os.remove(dir .. "/key.pem")
  os.remove(dir)
  return ctx, err
end

return tls
