/*
 * A C program embedding Lua 5.4 that keeps an IBKR gateway session alive from its own loop.
 *
 *   cc -o build/c_host examples/c_host/host.c $(pkg-config --cflags --libs lua5.4)
 *   IBKR_ROOT=. build/c_host [BASE_URL] [SECONDS]
 *
 * The host owns the loop (here: a fixed 10 ms "frame" that could be a game loop or a GUI's idle
 * handler). Lua gives it a keep-alive coroutine; each resume returns the seconds until the
 * coroutine wants the next resume, and never blocks (the C core runs the HTTP exchange on its own
 * thread), so a frame is never late because of the keep-alive. The longest resume is printed.
 * IBKR_ROOT (default ".") is where lua/ and ibkr/core.so are found when not installed.
 */
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void pause_until(double when) {
  double d = when - now();
  if (d <= 0) return;
  struct timespec t = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
  nanosleep(&t, NULL);
}

/* Builds the session and its keep-alive; leaves the coroutine on the stack. */
static const char *setup_chunk =
  "local root, url = ...\n"
  "package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;' .. package.path\n"
  "package.cpath = root .. '/?.so;' .. package.cpath\n"
  "local ibkr = require('ibkr')\n"
  "SESSION = ibkr.new{ base_url = url }\n"  /* a global the host uses to stop it */
  "return SESSION:keepalive{ interval = 60,\n"
  "  on_state = function(new, old) print(string.format('session %s -> %s', old or '(start)', new)) end,\n"
  "  on_error = function(err) io.stderr:write('keep-alive: ', tostring(err), '\\n') end }\n";

int main(int argc, char **argv) {
  const char *root = getenv("IBKR_ROOT");
  const char *url = argc > 1 ? argv[1] : getenv("IBKR_BASE_URL");
  double seconds = argc > 2 ? atof(argv[2]) : 0; /* 0 = forever */
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  if (luaL_loadstring(L, setup_chunk) != LUA_OK) goto fail;
  lua_pushstring(L, root ? root : ".");
  if (url) lua_pushstring(L, url); else lua_pushnil(L);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) goto fail;
  lua_State *co = lua_tothread(L, -1);   /* stays referenced from L's stack */

  const double frame = 0.010;
  double start = now(), wake_at = start, longest = 0;
  long frames = 0, resumes = 0;
  for (;;) {
    double t = now();
    if (seconds > 0 && t - start >= seconds) break;
    if (t >= wake_at) {               /* the keep-alive is due */
      int nres = 0;
      double t0 = now();
      int st = lua_resume(co, L, 0, &nres);
      double d = now() - t0;
      resumes++;
      if (d > longest) longest = d;
      if (st == LUA_YIELD) {
        double wait = nres > 0 ? lua_tonumber(co, -nres) : 0;   /* the first value: seconds */
        lua_pop(co, nres);
        wake_at = now() + wait;
      } else if (st == LUA_OK) {
        puts("keep-alive ended");
        break;
      } else {
        fprintf(stderr, "keep-alive raised: %s\n", lua_tostring(co, -1));
        break;
      }
    }
    frames++;                          /* ... the host's own work for this frame ... */
    pause_until(t + frame);
  }
  /* Stop: close the coroutine (frees a request in flight), then the session. */
#if LUA_VERSION_RELEASE_NUM >= 50406
  lua_closethread(co, L);
#else
  lua_resetthread(co);
#endif
  if (luaL_dostring(L, "SESSION:close()") != LUA_OK) goto fail;
  printf("frames: %ld, resumes: %ld, longest resume: %.3f ms\n", frames, resumes, longest * 1000);
  lua_close(L);
  return 0;
fail:
  fprintf(stderr, "c_host: %s\n", lua_tostring(L, -1));
  lua_close(L);
  return 1;
}
