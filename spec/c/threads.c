/*
** threads.c -- a host with many Lua states on many threads, each using ibkr.
**
** usage: threads BASE_URL [THREADS [CALLS]]   (defaults 8 and 1000; the mock with --no-pacing)
**
** 1. One state loads ibkr.core twice (package.loaded cleared, as busted's insulation does) and
**    uses sessions of both loads side by side.
** 2. THREADS threads start together; each creates its own lua_State, requires "ibkr", makes
**    CALLS calls (tickle / auth_status / sso_validate blocking, and tickle as a cooperative call,
**    whose transfer runs on the module's worker thread), one error call, requests aborted while
**    their worker runs (request closed, session closed, keep-alive closed), the same in a
**    session's warm lane (the exchange on the thread itself), a push stream (connected by the
**    worker thread, then read and written on its own thread; one closed while it connects, one
**    collected), and closes. Every call must succeed. Run it under TSan (module built with
**    -fsanitize=thread) or helgrind.
** Exit 0 when every call of every thread succeeded.
** LUA_PATH / LUA_CPATH as usual select the Lua layer and the module build.
*/
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static const char *base_url;
static long ncalls;
static pthread_barrier_t barrier;

static const char reload_chunk[] =
  "local url = ...\n"
  "local a = require('ibkr.core')\n"
  "package.loaded['ibkr.core'] = nil\n"
  "local b = require('ibkr.core')\n"
  "assert(a ~= b, 'the second require returned the cached module')\n"
  "local sa = a.new{ base_url = url }\n"
  "local sb = b.new{ base_url = url }\n"
  "for _ = 1, 10 do\n"
  "  assert(sa:perform('POST', '/tickle', {repeatable = true}))\n"
  "  assert(sb:perform('POST', '/tickle', {repeatable = true}))\n"
  "end\n"
  "local ra = assert(sa:start('POST', '/tickle', {repeatable = true}))\n"
  "local rb = assert(sb:start('POST', '/tickle', {repeatable = true}))\n"
  "assert(ra:wait(10) and rb:wait(10))\n"
  "assert(ra:result()); assert(rb:result())\n"
  "assert(b.is_error(select(2, a.decode('{'))), 'error objects differ between loads')\n"
  "sa:close(); sb:close()\n"
  "return 20\n";

static const char thread_chunk[] =
  "local url, n, id = ...\n"
  "local ibkr = require('ibkr')\n"
  "local core = ibkr.core\n"
  "local s = ibkr.new{ base_url = url, pacing = false, retries = 0, timeout = 30 }\n"
  "local c = ibkr.new{ base_url = url, pacing = false, retries = 0, timeout = 30, cooperative = true }\n"
  "local function coop(f)\n"           /* a cooperative call: start/step on the worker thread */
  "  local co = coroutine.create(f)\n"
  "  while true do\n"
  "    local ok, a, b = coroutine.resume(co)\n"
  "    assert(ok, a)\n"
  "    if coroutine.status(co) == 'dead' then return a, b end\n"
  "    core.sleep(math.min(a or 0, 0.001))\n"
  "  end\n"
  "end\n"
  "local ok = 0\n"
  "for i = 1, n do\n"
  "  local r, err\n"
  "  if i % 4 == 0 then r, err = s:auth_status()\n"
  "  elseif i % 4 == 1 then r, err = s:tickle()\n"
  "  elseif i % 4 == 2 then r, err = coop(function() return c:tickle() end)\n"
  "  else r, err = s:sso_validate() end\n"
  "  if not r then error(string.format('thread %d call %d: %s', id, i, tostring(err))) end\n"
  "  ok = ok + 1\n"
  "end\n"
  /* one session, several coroutines at once (side by side on the engine) and blocking calls
  ** on the same session between their resumes */
  "local cos = {}\n"
  "for k = 1, 4 do cos[k] = coroutine.create(function()\n"
  "  for j = 1, 5 do local r2, e2 = c:tickle(); if not r2 then error(string.format('co %d.%d: %s', k, j, tostring(e2))) end end\n"
  "end) end\n"
  "cos[5] = coroutine.create(function()\n"
  "  for _ = 1, 5 do assert(c:auth_status()); coroutine.yield(0) end\n"
  "end)\n"
  "while not ibkr.run(cos, { duration = 0.001 }) do assert(c:auth_status()) end\n"
  "local r, err = s:request('GET', '/no/such/endpoint')\n"
  "assert(r == nil and err.kind == 'http' and err.status == 404, tostring(err))\n"
  /* requests aborted while their worker runs: closed request, closed session, closed keep-alive */
  "local req = core.new{ base_url = url }:start('POST', '/tickle', {repeatable = true}); req:close()\n"
  "local t = core.new{ base_url = url }\n"
  "local req2 = t:start('POST', '/tickle', {repeatable = true}); t:close()\n"
  "assert(req2:step() and select(2, req2:result()).kind == 'closed')\n"
  /* the same in the lane of a warm session: the exchange runs on this thread */
  "local w = core.new{ base_url = url }\n"
  "for _ = 1, 3 do local rw = w:start('POST', '/tickle', {repeatable = true}); assert(rw:wait(10)); assert(rw:result()) end\n"
  "assert(w:info().lane_exchanges == 2, 'the warm lane was not used')\n"
  "local rw2 = w:start('POST', '/tickle', {repeatable = true}); rw2:close()\n"
  "local rw3 = w:start('POST', '/tickle', {repeatable = true}); w:close()\n"
  "assert(rw3:step() and select(2, rw3:result()).kind == 'closed')\n"
  /* the push channel: a websocket connected by the engine thread, then read and written on this
  ** one; one closed while the engine connects it; one dropped to the GC */
  "local got = {}\n"
  "local st = c:stream{ topics = { 'sor+{}' }, tic_interval = 0.01, on_message = function(m) got[#got + 1] = m.topic end }\n"
  "local stopper = coroutine.create(function()\n"
  "  local seen = {}\n"
  "  while not (seen.sor and seen.tic) do for _, t in ipairs(got) do seen[t] = true end; coroutine.yield(0.001) end\n"
  "  st:close()\n"
  "end)\n"
  "assert(ibkr.run({ st, stopper }, { duration = 60 }), 'the stream never got its answers')\n"
  "local st2 = c:stream{}; coroutine.resume(st2:coroutine()); coroutine.resume(st2:coroutine()); st2:close()\n"
  "local ws = core.new{ base_url = url }:websocket('/ws'); ws:step(); ws = nil; collectgarbage()\n"
  "local ka = c:keepalive{ interval = 0.01 }\n"
  "local _, _, inflight = assert(coroutine.resume(ka)); assert(coroutine.close(ka))\n"
  "assert(inflight == nil or (inflight:done() and inflight:pollfd() == -1))\n"
  "s:close(); c:close()\n"
  "return ok\n";

/* run chunk with (url, ncalls, id) in a fresh state; returns the integer it returns, or -1 */
static long run_state(const char *chunk, const char *name, long id) {
  long r = -1;
  lua_State *L = luaL_newstate();
  if (L == NULL) return -1;
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, chunk, strlen(chunk), name) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
  } else {
    lua_pushstring(L, base_url);
    lua_pushinteger(L, ncalls);
    lua_pushinteger(L, id);
    if (lua_pcall(L, 3, 1, 0) != LUA_OK) fprintf(stderr, "%s %ld: %s\n", name, id, lua_tostring(L, -1));
    else r = (long)lua_tointeger(L, -1);
  }
  lua_close(L);
  return r;
}

static void *worker(void *ud) {
  long id = (long)(intptr_t)ud;
  pthread_barrier_wait(&barrier);              /* all states are created at once */
  return (void *)(intptr_t)run_state(thread_chunk, "=thread", id);
}

int main(int argc, char **argv) {
  long nthreads = argc > 2 ? atol(argv[2]) : 8;
  pthread_t *t;
  long total = 0, failed = 0;
  if (argc < 2 || nthreads < 1) {
    fprintf(stderr, "usage: threads BASE_URL [THREADS [CALLS]]\n");
    return 64;
  }
  base_url = argv[1];
  ncalls = argc > 3 ? atol(argv[3]) : 1000;

  if (run_state(reload_chunk, "=reload", 0) != 20) {
    fprintf(stderr, "loading ibkr.core twice in one state failed\n");
    return 1;
  }
  printf("module loaded twice in one state: ok\n");

  t = calloc((size_t)nthreads, sizeof *t);
  pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
  for (long i = 0; i < nthreads; i++)
    if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)(i + 1)) != 0) return 1;
  for (long i = 0; i < nthreads; i++) {
    void *r;
    pthread_join(t[i], &r);
    if ((long)(intptr_t)r == ncalls) total += ncalls;
    else failed++;
  }
  pthread_barrier_destroy(&barrier);
  free(t);
  printf("%ld threads x %ld calls: %ld calls ok, %ld threads failed\n", nthreads, ncalls, total, failed);
  return failed ? 1 : 0;
}
