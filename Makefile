# lua-ibkr -- build, test and check. `make help` lists the targets.
LUA       ?= lua5.4
CC        ?= cc
CFLAGS    ?= -O2 -g
PKGS       = lua5.4 libcurl
DEFS       = -D_POSIX_C_SOURCE=200809L
WARN       = -Wall -Wextra -Werror
ALL_CFLAGS = -std=c99 -fPIC -fvisibility=hidden $(WARN) $(DEFS) $(CFLAGS) \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null || echo -I/usr/include/lua5.4)
LIBS       = -lcurl -lcrypto -lwslay -pthread -lm
# src/*.c face Lua (each registers itself from core.c's mods[]); src/lib/*.c never touch the
# Lua API (make lint checks it): the engine, the lanes, transfers, connections, websocket
# connections, error kinds, text, buffers
LIB_SRCS   = src/lib/transfer.c src/lib/lane.c src/lib/engine.c src/lib/handle.c src/lib/conn.c \
             src/lib/wsconn.c src/lib/kind.c src/lib/text.c src/lib/buf.c
SRCS       = src/core.c src/session.c src/request.c src/message.c src/error.c src/json.c src/wire.c \
             src/signal.c src/oauth.c src/proc.c src/websocket.c $(LIB_SRCS)
HDRS       = src/ibkr.h $(wildcard src/lib/*.h)
MODULE     = ibkr/core.so
VERSION   := $(shell sed -n 's/^return "\(.*\)"$$/\1/p' lua/ibkr/version.lua)
ROCKSPEC   = rockspec/ibkr-web-api-$(VERSION)-1.rockspec
ROCKSPEC_MOCK = rockspec/ibkr-web-api-mock-$(VERSION)-1.rockspec
TREE      ?= lua_modules
DIST      ?= dist
LUAROCKS_VARS ?=          # e.g. CURL_INCDIR=... CURL_LIBDIR=... for luarocks, off Debian
DIST_NAME  = lua-ibkr-$(VERSION)

# Debian's luacheck and luarocks run on Lua 5.1: keep a Lua 5.4 profile (eval "$(luarocks
# --lua-version=5.4 path)") or a LUA_INIT out of them. spec/run does the same for the 5.4 side.
LUA51      = env -u LUA_PATH -u LUA_CPATH -u LUA_INIT -u LUA_PATH_5_1 -u LUA_CPATH_5_1 -u LUA_INIT_5_1

# Debian 12 packages: what the tests need, and what checks/benchmarks add.
DEPS       = gcc make pkg-config openssl lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson \
             luarocks libssl-dev libwslay-dev lua-busted lua-check lua-socket lua-sec lua-luv lua-cqueues
DEPS      += lua-zlib        # the mock gateway's gzip fault
DEPS      += lua-luaossl     # the mock gateway's websocket handshake (SHA-1)
DEPS      += python3-websocket # a second, independent websocket client in the mock's specs
DEPS      += python3-prometheus-client # the specs read /metrics with a real Prometheus parser
DEPS_CHECK = valgrind clang libclang-rt-14-dev
DEPS_BENCH = nginx-light

.PHONY: all deps deps-check deps-bench demo test lint lint-lib dist install scm-rockspecs clean help

all: $(MODULE)

# linked to a temporary name, then renamed: a suite that has the old module mapped keeps it intact
$(MODULE): $(SRCS) $(HDRS)
	@mkdir -p ibkr
	$(CC) $(ALL_CFLAGS) -shared -o $@.tmp $(SRCS) $(LIBS) $(LDFLAGS)
	mv -f $@.tmp $@

# Installs missing Debian packages when run as root; otherwise says what to install.
deps:
	@.ci/deps $(DEPS)
deps-check:
	@.ci/deps $(DEPS) $(DEPS_CHECK)
deps-bench:
	@.ci/deps $(DEPS) $(DEPS_BENCH)

# The main job, against the bundled mock gateway (HTTPS): the keep-alive noticing and repairing
# a lost backend connection, idle expiry, a competing login, a logout and a gateway restart.
demo: deps $(MODULE)
	examples/demo.sh

lint: $(MODULE) lint-lib
	$(LUA51) luacheck --no-color -q lua spec bin/* examples bench

# src/lib/ is the Lua-free part of the module: no file there includes a Lua header (or ibkr.h,
# which does), and each compiles without Lua's include path, so a lua_* call or type would not
lint-lib:
	@if grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]([^">]*/)?(lua|lauxlib|lualib|luaconf|ibkr)\.h' \
	    src/lib/*.[ch]; then echo "src/lib/ must not include a Lua header (above)"; exit 1; fi
	@for f in $(LIB_SRCS); do \
	  $(CC) -std=c99 $(WARN) $(DEFS) -fsyntax-only $$f || exit 1; \
	done

test: deps $(MODULE) lint
	spec/run

# Source rocks of both rockspecs, until the rocks are published: $(DIST)/ibkr-web-api-V-1.src.rock
# and $(DIST)/ibkr-web-api-mock-V-1.src.rock, each its rockspec (its source: the archive beside it)
# and lua-ibkr-V.tar.gz, the tree's files (git's view of it: tracked and not ignored).
# `luarocks --lua-version=5.4 install ./FILE.src.rock --deps-mode=none` builds one offline.
dist:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	if git rev-parse --git-dir >/dev/null 2>&1; then git ls-files -z --cached --others --exclude-standard; \
	else find . -path ./.git -prune -o -path './$(DIST)' -prune -o -path ./build -prune \
	  -o -path ./lua_modules -prune -o -path ./ibkr -prune -o -type f -printf '%P\0'; fi \
	  | tar --null -T - --ignore-failed-read --transform 's,^,$(DIST_NAME)/,' -czf "$$tmp/$(DIST_NAME).tar.gz"; \
	mkdir -p $(DIST); \
	for r in $(ROCKSPEC) $(ROCKSPEC_MOCK); do \
	  b=$$(basename $$r .rockspec); \
	  sed -e 's|^  url = .*|  url = "$(DIST_NAME).tar.gz", -- the archive inside this source rock|' \
	      -e 's|^  tag = .*|  dir = "$(DIST_NAME)",|' $$r > "$$tmp/$$b.rockspec"; \
	  (cd "$$tmp" && zip -q $$b.src.rock $$b.rockspec $(DIST_NAME).tar.gz); \
	  mv -f "$$tmp/$$b.src.rock" $(DIST)/; echo "$(DIST)/$$b.src.rock"; \
	done

# Both rocks (the client, then the mock gateway) into $(TREE) (default ./lua_modules), from the
# source rocks of `make dist`, offline (Debian provides their dependencies). luarocks builds them in
# a directory of its own: nothing of the checkout's build (./ibkr/core.so) is touched.
install: deps dist
	$(LUA51) luarocks --lua-version=5.4 --tree=$(TREE) install --deps-mode=none \
	  $(DIST)/$(notdir $(ROCKSPEC:.rockspec=.src.rock)) $(LUAROCKS_VARS)
	$(LUA51) luarocks --lua-version=5.4 --tree=$(TREE) install --deps-mode=none \
	  $(DIST)/$(notdir $(ROCKSPEC_MOCK:.rockspec=.src.rock)) $(LUAROCKS_VARS)

# The scm rockspecs are the release ones built from the main branch: regenerate them after
# changing a release rockspec (spec/package_spec.lua checks that they agree).
scm-rockspecs:
	for r in ibkr-web-api ibkr-web-api-mock; do \
	  sed -e 's/^version = ".*"/version = "scm-1"/' -e 's/^  tag = ".*",/  branch = "main",/' \
	      -e 's/"ibkr-web-api = [0-9.]*"/"ibkr-web-api = scm"/' \
	      rockspec/$$r-$(VERSION)-1.rockspec > rockspec/$$r-scm-1.rockspec; \
	done

clean:
	rm -rf ibkr lua_modules build dist src/*.o src/lib/*.o

help:
	@echo "make          build ibkr/core.so in the tree"
	@echo "make demo     run the keep-alive against the bundled mock gateway (watch it repair the session)"
	@echo "make test     install missing packages (as root), build, luacheck, run the busted suite"
	@echo "make dist     source rocks of ibkr-web-api and ibkr-web-api-mock in ./dist (DIST=...)"
	@echo "make install  both rocks from those source rocks into ./lua_modules (TREE=...), offline"
	@echo "make check    test + sanitizers + valgrind + fuzz smoke + threads"
	@echo "make bench    benchmarks against raw libcurl and luasocket (nginx fake gateway)"
	@echo "make bench-sidecar  the worst tickle delay of keepalive --listen under hostile clients"

# ---- memory, fuzzing, threads (make check) ---------------------------------
# check         test + check-memory + fuzz (smoke) + threads + longrun-short
# check-memory  the whole busted suite under ASan+UBSan (module in build/asan, only libasan
#               preloaded, the mock never), then valgrind memcheck over spec/c/memcheck.lua
#               (MEMCHECK_CALLS calls covering every error kind; definite/indirect leaks fail)
#               and over spec/c/oauth_memcheck.lua (OAUTH_ROUNDS rounds of the OAuth crypto) and
#               spec/c/push_memcheck.lua (PUSH_ROUNDS rounds of the push channel's paths)
# fuzz          libFuzzer over response handling for FUZZ_TIME seconds (default 30; 600 for a
#               long run); new inputs go to build/fuzz/new, `make fuzz-merge` minimizes them
#               into spec/fuzz/corpus
# threads       spec/c/threads.c (8 lua_States x 1000 calls, module loaded twice) under TSan,
#               over HTTP and HTTPS
# longrun       keep-alive at 10 ms for LONGRUN_TICKS (100000, ~30 min) ticks with faults; RSS and
#               Lua heap flat. Not in CI. longrun-short (2000 ticks, ~35 s) is part of check.
SAN_FLAGS      = -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined,float-cast-overflow \
                 -fno-sanitize-recover=undefined,float-cast-overflow
ASAN_MODULE    = build/asan/ibkr/core.so
TSAN_MODULE    = build/tsan/ibkr/core.so
THREADS_BIN    = build/tsan/threads
FUZZER         = build/fuzz/fuzz_response
FUZZ_TIME     ?= 30
MEMCHECK_CALLS ?= 10000
OAUTH_ROUNDS   ?= 20
PUSH_ROUNDS    ?= 2
LONGRUN_TICKS ?= 100000
LUA_CFLAGS     = $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LIBASAN        = $(shell gcc -print-file-name=libasan.so)
# package_spec, examples_spec and docs_spec run other programs (cp, luarocks, cc, the demo's processes with
# the normal module): they would inherit the preload and fail on their own leaks. The specs of the
# mock gateway itself test the mock, which runs without the sanitizer and without ibkr.core.
MOCK_SPECS     = spec/mock_spec.lua spec/mock_http_spec.lua spec/mock_faults_spec.lua \
                 spec/mock_flood_spec.lua spec/mock_process_spec.lua spec/mock_push_spec.lua
# (the documentation checks only read names: nothing of the C core runs in them)
DOC_SPECS      = spec/docs_spec.lua spec/docs_names_spec.lua spec/reference_spec.lua
ASAN_SPECS     = $(filter-out spec/package_spec.lua spec/examples_spec.lua $(DOC_SPECS) $(MOCK_SPECS),\
                   $(wildcard spec/*_spec.lua))
LUAENV         = env -u LUA_INIT -u LUA_INIT_5_4 -u LUA_PATH_5_4 -u LUA_CPATH_5_4 \
                 LUA_PATH="lua/?.lua;lua/?/init.lua;./?.lua;;"
VALGRIND       = valgrind -q --fair-sched=yes --leak-check=full --show-leak-kinds=definite,indirect \
                 --errors-for-leak-kinds=definite,indirect --error-exitcode=3 --keep-debuginfo=yes

.PHONY: check check-memory asan valgrind valgrind-oauth valgrind-push fuzz fuzz-merge threads longrun longrun-short

check: test check-memory fuzz threads longrun-short

check-memory: asan valgrind valgrind-oauth valgrind-push

$(ASAN_MODULE): $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN_FLAGS) -shared -Wl,-z,nodelete -o $@ $(SRCS) $(LIBS)

# The mock runs without the sanitizer preload, so with the plain module (its OAuth mode loads it).
asan: deps-check $(ASAN_MODULE) $(MODULE)
	RUNNER="env LD_PRELOAD=$(LIBASAN) ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 IBKR_TIME_SCALE=5" \
	IBKR_MOCK_GATEWAY="env -u LD_PRELOAD LUA_CPATH_5_4='$(CURDIR)/?.so;;' lua5.4 bin/ibkr-mock-gateway" \
	CPATH_DIR=build/asan \
	  spec/run $(ASAN_SPECS)

valgrind: deps-check $(MODULE)
	$(LUAENV) LUA_CPATH="./?.so;;" $(VALGRIND) $(LUA) spec/c/memcheck.lua $(MEMCHECK_CALLS)

# the push channel's every path (streams, keep-alive push, the hostile server): PUSH_ROUNDS rounds
valgrind-push: deps-check $(MODULE)
	$(LUAENV) LUA_CPATH="./?.so;;" $(VALGRIND) $(LUA) spec/c/push_memcheck.lua $(PUSH_ROUNDS)

# [oauth] every path of src/oauth.c (keys, handshake, signing, refusals) and an OAuth session
valgrind-oauth: deps-check $(MODULE)
	$(LUAENV) LUA_CPATH="./?.so;;" $(VALGRIND) $(LUA) spec/c/oauth_memcheck.lua $(OAUTH_ROUNDS)

$(FUZZER): spec/fuzz/fuzz_response.c $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined $(WARN) $(DEFS) \
	  -D_DEFAULT_SOURCE $(LUA_CFLAGS) -o $@ spec/fuzz/fuzz_response.c -llua5.4 -lcurl -lcrypto -lwslay -lm -pthread

fuzz: deps-check $(FUZZER)
	@mkdir -p build/fuzz/new build/fuzz/seeds
	-@$(LUA) spec/fuzz/mkcorpus.lua build/fuzz/seeds
	$(FUZZER) -max_total_time=$(FUZZ_TIME) -max_len=8192 -timeout=10 -print_final_stats=1 \
	  -artifact_prefix=build/fuzz/ build/fuzz/new spec/fuzz/corpus build/fuzz/seeds

fuzz-merge: $(FUZZER)
	$(FUZZER) -merge=1 spec/fuzz/corpus build/fuzz/new build/fuzz/seeds

$(TSAN_MODULE): $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -g -O1 -fsanitize=thread -shared -o $@ $(SRCS) $(LIBS)

$(THREADS_BIN): spec/c/threads.c
	@mkdir -p $(dir $@)
	$(CC) -std=c99 $(WARN) $(DEFS) -g -O1 -fsanitize=thread $(LUA_CFLAGS) -o $@ $< -llua5.4 -pthread

threads: deps-check $(TSAN_MODULE) $(THREADS_BIN)
	for tls in --no-tls --tls; do \
	  $(LUAENV) LUA_CPATH="build/tsan/?.so;;" TSAN_OPTIONS="halt_on_error=1 exitcode=66" \
	    spec/c/with-mock $$tls --no-pacing -- sh -c '$(THREADS_BIN) "$$IBKR_MOCK_URL" 8 1000' || exit 1; \
	done

longrun: $(MODULE)
	$(LUAENV) LUA_CPATH="./?.so;;" $(LUA) spec/c/longrun.lua $(LONGRUN_TICKS)

longrun-short: $(MODULE)
	$(LUAENV) LUA_CPATH="./?.so;;" $(LUA) spec/c/longrun.lua 2000

# ---- benchmarks (make bench) -------------------------------------------------
# bench  nginx fake gateway (HTTP + HTTPS, keep-alive) on one CPU, each peer on the other: raw
#        libcurl C, luasocket + cjson, ibkr, ibkr.core, start/step; medians of BENCH_RUNS (5) runs
#        of BENCH_N (10000) calls; memory over BENCH_MEM_N (100000) calls; keep-alive stall
#        against the mock. Figures only, never a gate. Table in bench/out/results.md; see
#        bench/BENCHMARKS.md.
.PHONY: bench bench-sidecar

bench: deps-bench $(MODULE)
	sh bench/run.sh

# ibkr-session keepalive --listen/--on-change under hostile clients and commands: the worst delay of
# a tickle under each (bench/sidecar.lua; SIDECAR_SECONDS per scenario, default 10)
bench-sidecar: deps $(MODULE)
	$(LUA) bench/sidecar.lua $(or $(SIDECAR_SECONDS),10)

# ---- examples -----------------------------------------------------------------
# The C host example outside the test suite (spec/examples_spec.lua builds and runs it too).
build/c_host: examples/c_host/host.c
	@mkdir -p build
	$(CC) -std=c99 $(DEFS) $(WARN) -o $@ $< \
	  $(shell pkg-config --cflags --libs lua5.4 2>/dev/null || echo -I/usr/include/lua5.4 -llua5.4)
