#!/usr/bin/env bash
# make demo: the keep-alive against the bundled mock gateway (HTTPS, self-signed like the real
# one). The mock loses the backend connection, expires an idle session, goes competing, logs out,
# and is killed and restarted; `ibkr-session keepalive` notices each change (one line each on
# stdout; repairs and errors on stderr) and repairs what can be repaired. Ends by itself (< 1 min).
set -euo pipefail
cd "$(dirname "$0")/.."
# this checkout's modules first, whatever the shell's Lua variables hold (as spec/run does)
unset LUA_INIT LUA_INIT_5_4 LUA_PATH LUA_CPATH
export LUA_PATH_5_4="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;" LUA_CPATH_5_4="$PWD/?.so;;"
LUA=${LUA:-lua5.4}
STEP=${DEMO_STEP:-3}   # seconds to linger on each scene once the keep-alive has shown it

bold=; dim=; off=
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then  # escape codes only for a terminal, never with NO_COLOR
  bold=$(tput bold 2>/dev/null || true); dim=$(tput dim 2>/dev/null || true); off=$(tput sgr0 2>/dev/null || true)
fi
say() { printf '\n%s── %s%s\n' "$bold" "$*" "$off"; }
ctl() { "$LUA" examples/mockctl.lua "$ROOT" "$@"; }

# Waits until the keep-alive has printed N state lines in all (it notices each change on its next
# tickle, every second), then lingers STEP seconds for the watcher. Gives up after 30 s.
seen=0
expect() {
  seen=$((seen + $1))
  for _ in $(seq 300); do
    [ "$(grep -c 'T[0-9:]*Z ' "$tmp/ka.out" 2>/dev/null || true)" -ge "$seen" ] && break
    sleep 0.1
  done
  sleep "$STEP"
}

tmp=$(mktemp -d)
mock_pid=; ka_pid=
cleanup() {
  [ -n "$ka_pid" ] && kill "$ka_pid" 2>/dev/null || true
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# Starts the mock (extra arguments passed on) and waits for the URL it prints first.
start_mock() {
  : > "$tmp/url"
  bin/ibkr-mock-gateway --idle-timeout 3 --init-delay 0.3 "$@" > "$tmp/url" 2> "$tmp/mock.err" &
  mock_pid=$!
  for _ in $(seq 100); do
    URL=$(head -n 1 "$tmp/url")
    [ -n "$URL" ] && break
    sleep 0.1
  done
  [ -n "$URL" ] || { echo "demo: the mock gateway did not start:"; cat "$tmp/mock.err"; exit 1; }
  ROOT=${URL%/v1/api}
}

# a free port outside the kernel's ephemeral range (32768-60999), so that no other program asking
# for any free port takes it while the gateway is down in scene 5
PORT=$("$LUA" -e 'local socket = require("socket")
  for _ = 1, 1000 do
    local port = math.random(20000, 32000)
    local l = socket.bind("127.0.0.1", port)
    if l then l:close() print(port) return end
  end
  os.exit(1)')
start_mock --port "$PORT"
say "A mock IBKR gateway listens on $URL (HTTPS, self-signed certificate)"
echo "${dim}ibkr-session --url $URL keepalive --interval 1 --compete${off}"
bin/ibkr-session --url "$URL" keepalive --interval 1 --compete --duration 55 > "$tmp/ka.out" &
ka_pid=$!
tail -n +1 -s 0.1 -f "$tmp/ka.out" --pid "$ka_pid" &   # what the watcher sees
tail_pid=$!
expect 1                                     # ready

say "1/5 The gateway loses its connection to IBKR (disconnected): the keep-alive re-initialises it"
ctl POST /__mock/state '{"state":"disconnected"}'
expect 2                                     # disconnected, ready

say "2/5 The host sleeps 5 s (SIGSTOP): nobody tickles, the gateway expires the idle session"
kill -STOP "$ka_pid"
sleep 5
kill -CONT "$ka_pid"
expect 2                                     # unauthenticated, ready

say "3/5 The same user logs in elsewhere (competing): with --compete the keep-alive takes it back"
ctl POST /__mock/state '{"state":"competing"}'
expect 2                                     # competing, ready

say "4/5 Logout: no session left — only a browser login helps, so the keep-alive reports and waits"
ctl POST /v1/api/logout
expect 1                                     # no_session
say "    ... the user logs in again in the browser"
ctl POST /__mock/login '{"state":"ready"}'
expect 1                                     # ready

say "5/5 The gateway process is killed, then restarted on the same port"
kill -KILL "$mock_pid"; wait "$mock_pid" 2>/dev/null || true
expect 1                                     # down (retries ride out shorter outages: ~3 s)
start_mock --port "$PORT"
expect 1                                     # ready

say "Done: every change was noticed, the repairable ones repaired. Stopping."
kill "$ka_pid" 2>/dev/null || true
wait "$ka_pid" "$tail_pid" 2>/dev/null || true   # the keep-alive's last line, shown by tail
ka_pid=
