#!/bin/sh
# make bench: lua-ibkr side by side with raw libcurl and the luasocket way, against an nginx fake
# gateway on loopback (HTTP and HTTPS, keep-alive), client and server pinned to different CPUs.
# Prints the table (also written to bench/out/results.md); bench/BENCHMARKS.md explains it.
#
# Environment: BENCH_N (calls per timed run, default 10000), BENCH_RUNS (runs per peer, default 5),
# BENCH_MEM_N (calls of the memory run, default 100000), BENCH_PEERS (subset, space-separated),
# BENCH_SESSIONS (sessions kept alive by one process, default 1000),
# BENCH_LCURL_DIR (where Lua-cURLv3 for Lua 5.4 was built, outside the repository: lcurl.so and
# cURL.lua; without it the lcurl peer runs only when `require "cURL"` works as installed),
# BENCH_PROF_N (calls of a profile run, default 2000), LUA (default lua5.4), CC (default cc).
# `sh bench/run.sh table`: the peers' table alone (no memory, stall, timing, sessions, large runs).
# Everything started here is stopped here, by pid.
set -eu

cd "$(dirname "$0")/.."
ROOT=$(pwd)
LUA=${LUA:-lua5.4}
CC=${CC:-cc}
MODE=${1:-bench}
N=${BENCH_N:-10000}
RUNS=${BENCH_RUNS:-5}
MEM_N=${BENCH_MEM_N:-100000}
PEERS=${BENCH_PEERS:-"raw lcurl core ibkr coop-run step-busy step-sleep luasocket luasocket-close"}
SESSIONS=${BENCH_SESSIONS:-1000}
OUT=$ROOT/bench/out
export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
export LUA_CPATH="$ROOT/?.so;;"

for tool in nginx openssl taskset "$LUA" "$CC"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench: '$tool' not found (make deps installs it)" >&2; exit 1; }
done
NGINX=$(command -v nginx)

mkdir -p "$OUT"
"$CC" -O2 -std=c99 -Wall -Wextra -Werror -o "$OUT/raw" bench/raw.c -lcurl

# CPUs: the client on one, the servers on another (when there are two)
if [ "$(nproc)" -ge 2 ]; then CLIENT_CPU=0; SERVER_CPU=1; else CLIENT_CPU=0; SERVER_CPU=0; fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ibkr-bench.XXXXXX")
NGINX_PID=
MOCK_PID=
cleanup() {
  if [ -n "$NGINX_PID" ]; then
    if [ -s "$TMP/nginx.pid" ]; then kill -QUIT "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    else kill "$NGINX_PID" 2>/dev/null || true; fi
    wait "$NGINX_PID" 2>/dev/null || true
  fi
  if [ -n "$MOCK_PID" ]; then kill "$MOCK_PID" 2>/dev/null || true; wait "$MOCK_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

# two free loopback ports (bound then released; nginx binds them a moment later)
set -- $("$LUA" -e 'local s = require("socket")
  local a, b = assert(s.bind("127.0.0.1", 0)), assert(s.bind("127.0.0.1", 0))
  local _, p1 = a:getsockname(); local _, p2 = b:getsockname(); print(p1, p2)')
HTTP_PORT=$1
HTTPS_PORT=$2

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
sed -e "s|@DIR@|$TMP|g" -e "s|@HTTP_PORT@|$HTTP_PORT|g" -e "s|@HTTPS_PORT@|$HTTPS_PORT|g" \
  bench/nginx.conf.in > "$TMP/nginx.conf"
taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/" -c "$TMP/nginx.conf" -e "$TMP/error.log" \
  >"$TMP/nginx.out" 2>&1 &
NGINX_PID=$!

HTTP_URL=http://127.0.0.1:$HTTP_PORT/v1/api
HTTPS_URL=https://127.0.0.1:$HTTPS_PORT/v1/api
i=0
until "$LUA" -e "os.exit(require('socket').connect('127.0.0.1', $HTTPS_PORT) and 0 or 1)" 2>/dev/null; do
  i=$((i + 1))
  if [ $i -gt 50 ] || ! kill -0 "$NGINX_PID" 2>/dev/null; then
    echo "bench: nginx did not start:" >&2; cat "$TMP/nginx.out" "$TMP/error.log" >&2 2>/dev/null || true
    exit 1
  fi
  sleep 0.1
done

HAVE_IBKR=yes
"$LUA" -e 'require("ibkr")' 2>/dev/null || HAVE_IBKR=no
# Lua-cURLv3 + lua-cjson, the generic-binding peer: built outside the repository (BENCHMARKS.md)
export BENCH_LCURL_DIR=${BENCH_LCURL_DIR:-}
HAVE_LCURL=yes
if [ -n "$BENCH_LCURL_DIR" ]; then
  lcurl_probe="package.cpath = os.getenv('BENCH_LCURL_DIR') .. '/?.so;' .. package.cpath
    package.path = os.getenv('BENCH_LCURL_DIR') .. '/?.lua;' .. package.path"
else
  lcurl_probe=
fi
"$LUA" -e "$lcurl_probe; require('cURL'); require('cjson')" 2>/dev/null || HAVE_LCURL=no
if [ $HAVE_LCURL = no ]; then
  echo "bench: Lua-cURLv3 for Lua 5.4 not found (BENCH_LCURL_DIR='$BENCH_LCURL_DIR'): the lcurl peer is" \
    "skipped; bench/BENCHMARKS.md says how to build it" >&2
fi
skip_peer() { # peer: whether this peer cannot run here
  case $1 in
    lcurl) [ $HAVE_LCURL = no ] ;;
    raw) false ;;
    luasocket*) false ;;
    *) [ $HAVE_IBKR = no ] ;;
  esac
}

# `sh bench/run.sh profile`: per peer (raw C, Lua-cURLv3 + cjson, ibkr.core, ibkr, ibkr's Lua layer
# alone (bench/layer.lua: no network, HTTP rows only), start/step), scenario
# and transport, the MARGINAL cost of one call: two runs of 5 and BENCH_PROF_N + 5 timed calls (50
# warm-up calls each), their difference divided by BENCH_PROF_N, so start-up and teardown cancel out.
#   - callgrind: user-space instructions (Ir) per call, and per object (libcurl, libc, the Lua VM,
#     ibkr/core.so, cjson...); the stable figure on a shared machine
#   - perf stat (when the kernel lets it count): context switches per call
#   - strace -c -f: system calls per call, by name
# One line per case in bench/out/profile.md; callgrind_annotate listings (inclusive and self) in
# bench/out/profile-*.txt.
if [ "$MODE" = profile ]; then
  PN=${BENCH_PROF_N:-2000}
  PPEERS=${BENCH_PEERS:-"raw lcurl core ibkr layer step-busy"}
  command -v valgrind >/dev/null 2>&1 || { echo "bench: profile needs valgrind" >&2; exit 1; }
  HAVE_PERF=no
  perf stat -x, -e context-switches true >/dev/null 2>&1 && HAVE_PERF=yes
  HAVE_STRACE=no
  command -v strace >/dev/null 2>&1 && HAVE_STRACE=yes
  PROF=$OUT/profile.md
  {
    echo "lua-ibkr profile, $(date -u '+%Y-%m-%d %H:%M UTC'), lua-ibkr $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "marginal per call over $PN calls (runs of 5 and $((PN + 5)) timed calls); Ir = callgrind instructions"
    echo
    echo "| scenario | transport | peer | Ir/call | × raw | by object (Ir/call) | ctx switches/call | syscalls/call |"
    echo "|---|---|---|---:|---:|---|---:|---|"
  } > "$PROF"
  for scen in auth mixed; do
    for proto in http https; do
      if [ $proto = http ]; then url=$HTTP_URL; else url=$HTTPS_URL; fi
      raw_ir=
      for peer in $PPEERS; do
        if skip_peer $peer || { [ $peer = layer ] && [ $proto = https ]; }; then continue; fi
        cg=$OUT/callgrind.$peer.$scen.$proto
        for k in 5 $((PN + 5)); do
          case $peer in
            raw) set -- "$OUT/raw" "$url" $scen $k 50 ;;
            layer) set -- "$LUA" bench/layer.lua $scen $k 50 ;;
            *) set -- "$LUA" bench/peer.lua $peer "$url" $scen $k 50 ;;
          esac
          taskset -c "$CLIENT_CPU" valgrind --tool=callgrind --callgrind-out-file="$cg.$k" "$@" >/dev/null 2>&1 \
            || echo "bench: callgrind $peer $scen $proto failed" >&2
          if [ $HAVE_PERF = yes ]; then
            taskset -c "$CLIENT_CPU" perf stat -x, -e context-switches -o "$TMP/perf.$k" "$@" >/dev/null 2>&1 \
              || echo "bench: perf stat $peer $scen $proto failed" >&2
          fi
          if [ $HAVE_STRACE = yes ]; then
            taskset -c "$CLIENT_CPU" strace -c -f -o "$TMP/strace.$k" "$@" >/dev/null 2>&1 \
              || echo "bench: strace $peer $scen $proto failed" >&2
          fi
        done
        ir=$("$LUA" bench/profile.lua ir "$cg.5" "$cg.$((PN + 5))" $PN)
        objs=$("$LUA" bench/profile.lua objects "$cg.5" "$cg.$((PN + 5))" $PN)
        cs=–; sys=–
        if [ $HAVE_PERF = yes ]; then cs=$("$LUA" bench/profile.lua perf "$TMP/perf.5" "$TMP/perf.$((PN + 5))" $PN); fi
        if [ $HAVE_STRACE = yes ]; then sys=$("$LUA" bench/profile.lua strace "$TMP/strace.5" "$TMP/strace.$((PN + 5))" $PN); fi
        [ $peer = raw ] && raw_ir=$ir
        ratio=–
        [ -n "$raw_ir" ] && ratio=$("$LUA" -e "print(string.format('%.2f', $ir / $raw_ir))")
        echo "| $scen | $proto | $peer | $ir | $ratio | $objs | $cs | $sys |" >> "$PROF"
        echo "profile $peer $scen $proto: $ir Ir/call ($objs); $cs context switches/call; syscalls/call: $sys" >&2
        callgrind_annotate --inclusive=yes "$cg.$((PN + 5))" 2>/dev/null | head -n 80 \
          > "$OUT/profile-$peer-$scen-$proto.txt"
        callgrind_annotate "$cg.$((PN + 5))" 2>/dev/null | head -n 80 > "$OUT/profile-self-$peer-$scen-$proto.txt"
        rm -f "$cg.5"
      done
    done
  done
  cat "$PROF"
  exit 0
fi

RESULTS=$TMP/results.txt
: > "$RESULTS"
echo "bench: nginx on CPU $SERVER_CPU ($HTTP_URL, $HTTPS_URL), clients on CPU $CLIENT_CPU;" \
  "N=$N calls per run, $RUNS runs" >&2

run_peer() { # proto url peer scenario
  proto=$1 url=$2 peer=$3 scen=$4
  n=$N
  case $peer in
    luasocket-close) n=$((N / 20)) ;;  # a new connection (and TLS handshake) per call
    step-*) n=$((N / 50)) ;;           # ms per call: see BENCHMARKS.md (the worker thread)
  esac
  [ "$n" -ge 100 ] || n=100
  n=$((n / 5 * 5))
  case $peer in
    raw) set -- "$OUT/raw" "$url" "$scen" "$n" ;;
    *) set -- "$LUA" bench/peer.lua "$peer" "$url" "$scen" "$n" ;;
  esac
  if line=$(taskset -c "$CLIENT_CPU" "$@"); then
    echo "proto=$proto $line" >> "$RESULTS"
  else
    echo "bench: $peer $scen over $proto failed" >&2
  fi
}

r=1
while [ $r -le "$RUNS" ]; do
  echo "bench: run $r/$RUNS" >&2
  for scen in auth mixed; do
    for proto in http https; do
      if [ $proto = http ]; then url=$HTTP_URL; else url=$HTTPS_URL; fi
      for peer in $PEERS; do
        if skip_peer $peer; then continue; fi
        run_peer $proto "$url" $peer $scen
      done
    done
  done
  r=$((r + 1))
done

if [ $HAVE_IBKR = yes ] && [ "$MODE" != table ]; then
  echo "bench: memory over $MEM_N calls" >&2
  for proto in http https; do
    if [ $proto = http ]; then url=$HTTP_URL; else url=$HTTPS_URL; fi
    taskset -c "$CLIENT_CPU" "$LUA" bench/memory.lua "$url" "$MEM_N" | sed "s/\$/ proto=$proto/" >> "$RESULTS" \
      || echo "bench: memory run over $proto failed" >&2
  done

  # keep-alive stall: the project's mock gateway delays /tickle by 2 s (fault injection)
  if [ -f bin/ibkr-mock-gateway ]; then
    for proto in http https; do
      if [ $proto = http ]; then tls=--no-tls; else tls=--tls; fi
      : > "$TMP/mock.url"
      taskset -c "$SERVER_CPU" "$LUA" bin/ibkr-mock-gateway $tls --no-pacing --parent-pid $$ \
        >"$TMP/mock.url" 2>"$TMP/mock.err" &
      MOCK_PID=$!
      i=0
      while [ ! -s "$TMP/mock.url" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
      url=$(head -n 1 "$TMP/mock.url")
      echo "bench: keep-alive stall over $proto ($url)" >&2
      if [ -n "$url" ]; then
        taskset -c "$CLIENT_CPU" "$LUA" bench/stall.lua "$url" 7 | sed "s/\$/ proto=$proto/" >> "$RESULTS" \
          || echo "bench: stall run over $proto failed" >&2
        # the host drivers next to a 10 ms timer of the host's, the same mock holding tickles 1 s
        for driver in luv cqueues none; do
          echo "bench: ibkr.$driver with a host timer over $proto" >&2
          taskset -c "$CLIENT_CPU" "$LUA" bench/hosts.lua $driver "$url" 6 | sed "s/\$/ proto=$proto/" \
            >> "$RESULTS" || echo "bench: ibkr.$driver run over $proto failed" >&2
        done
      else
        echo "bench: the mock gateway did not start" >&2; cat "$TMP/mock.err" >&2
      fi
      kill "$MOCK_PID" 2>/dev/null || true
      wait "$MOCK_PID" 2>/dev/null || true
      MOCK_PID=
    done
  else
    echo "bench: bin/ibkr-mock-gateway missing: no keep-alive stall figure" >&2
  fi

  # timings the specs leave to the bench: the pacer against the mock's count, ibkr-session's
  # --timeout and signal bounds (bench/timing.lua starts its own mock gateways)
  echo "bench: pacing and ibkr-session timings against the mock" >&2
  taskset -c "$CLIENT_CPU" "$LUA" bench/timing.lua >> "$RESULTS" || echo "bench: timing run failed" >&2

  # many sessions kept alive by one process (each tickles nginx once a second), and the decoder's
  # cost for a large answer (it runs inside one resume)
  for proto in http https; do
    if [ $proto = http ]; then url=$HTTP_URL; else url=$HTTPS_URL; fi
    echo "bench: $SESSIONS sessions kept alive over $proto" >&2
    (ulimit -n 8192 2>/dev/null || true
     taskset -c "$CLIENT_CPU" "$LUA" bench/thousand.lua "$url" "$SESSIONS" 10) | sed "s/\$/ proto=$proto/" \
      >> "$RESULTS" || echo "bench: $SESSIONS sessions over $proto failed" >&2
  done
  taskset -c "$CLIENT_CPU" "$LUA" bench/large.lua 5.7 >> "$RESULTS" || echo "bench: large answer failed" >&2
fi

{
  echo "lua-ibkr bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) CPUs, Linux $(uname -r)"
  echo "versions: $("$LUA" -v 2>&1 | head -n 1); libcurl $("$LUA" -e 'print(require("ibkr.core").curl_version())');" \
    "$("$NGINX" -v 2>&1); lua-ibkr $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "N=$N calls per timed run (luasocket-close N/20, step-sleep N/50), medians of $RUNS runs"
  echo
  "$LUA" bench/report.lua "$RESULTS"
} > "$OUT/results.md"
cp "$RESULTS" "$OUT/results.txt"
cat "$OUT/results.md"

# [oauth] OAuth 1.0a costs (bench/oauth.lua): one handshake (ms), per-request signing (µs, x an unsigned call)
if [ "$HAVE_IBKR" = yes ] && [ "$MODE" != table ] && [ -x bin/ibkr-mock-gateway ]; then
  echo
  taskset -c "$CLIENT_CPU" "$LUA" bench/oauth.lua | tee -a "$OUT/results.md" || echo "bench: oauth figures failed" >&2
fi

# The push channel (bench/push.lua): pushed state to on_state, the gateway's death to the state
# change, messages/s and CPU per message, resume times, 100 sessions each with a channel
if [ "$HAVE_IBKR" = yes ] && [ -x bin/ibkr-mock-gateway ]; then
  echo
  (ulimit -n 8192 2>/dev/null || true
   taskset -c "$CLIENT_CPU" "$LUA" bench/push.lua "${BENCH_PUSH_N:-30}") | tee -a "$OUT/results.md" \
    || echo "bench: push channel figures failed" >&2
fi
# ... and ibind's IbkrWsClient against the same server, when a checkout of it is given (IBIND_DIR;
# Debian's python3-websocket and python3-requests)
if [ -n "${IBIND_DIR:-}" ] && [ -x /usr/bin/python3 ]; then
  M=${BENCH_PUSH_M:-50000}
  "$LUA" bench/push_server.lua "$M" 200 > "$TMP/push_server.out" &
  PS_PID=$!
  i=0; until [ -s "$TMP/push_server.out" ] || [ $i -gt 50 ]; do sleep 0.1; i=$((i + 1)); done
  taskset -c "$CLIENT_CPU" /usr/bin/python3 bench/ibind_ws.py "http://127.0.0.1:$(head -n 1 "$TMP/push_server.out")/v1/api" \
    "$M" | tee -a "$OUT/results.md" || echo "bench: ibind figure failed" >&2
  kill "$PS_PID" 2>/dev/null || true; wait "$PS_PID" 2>/dev/null || true
fi
