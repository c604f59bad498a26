/*
 * A C program embedding Lua 5.4 that keeps an IBKR gateway session alive from its own loop.
 *
 *   cc -o build/c_host examples/c_host/host.c $(pkg-config --cflags --libs lua5.4)
 *   IBKR_ROOT=. build/c_host [BASE_URL] [SECONDS]
 *
 * The host owns the loop (here: a fixed 10 ms "frame" that could be a game loop or a GUI's idle
 * handler). Lua gives it a keep-alive coroutine; each resume returns the seconds until the
 * coroutine wants the next resume and, while a request is in flight, the request: its pollfd()
 * becomes readable when the answer is there. Between frames the host waits in poll(2) on that
 * descriptor, so the answer is picked up at once, not at the next timer. A resume never blocks
 * (the C core runs the HTTP exchange on its engine thread), so a frame is never late because of
 * the keep-alive. The longest resume is printed.
 * IBKR_ROOT (default ".") is where lua/ and ibkr/core.so are found when not installed.
 */
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Wait until `when`, or until fd (when >= 0) is readable; returns whether it is. */
static int wait_until(double when, int fd) {
  double d = when - now();
  if (d <= 0) return 0;
  if (fd >= 0) {
    struct pollfd p = { fd, POLLIN, 0 };
    return poll(&p, 1, (int)(d * 1000) + 1) > 0;
  }
  struct timespec t = { (time_t)d, (long)((d - (double)(time_t)d) * 1e9) };
  nanosleep(&t, NULL);
  return 0;
}

/* The yielded values (seconds [, request]) were moved to L's top: the request's descriptor, or
** -1. The values stay on L's stack (they keep the request alive) until the next resume. */
static int pollfd_of(lua_State *L, int nres) {
  int fd = -1;
  if (nres >= 2 && lua_isuserdata(L, -nres + 1)) {
    lua_getfield(L, -nres + 1, "pollfd");
    lua_pushvalue(L, -nres);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_isinteger(L, -1)) fd = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  return fd;
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
  int fd = -1, held = 0;                 /* descriptor of the request in flight; values on L */
  for (;;) {
    double t = now();
    if (seconds > 0 && t - start >= seconds) break;
    if (t >= wake_at) {               /* the keep-alive is due, or its answer is there */
      int nres = 0;
      double t0 = now();
      lua_pop(L, held);
      held = 0;
      int st = lua_resume(co, L, 0, &nres);
      double d = now() - t0;
      resumes++;
      if (d > longest) longest = d;
      if (st == LUA_YIELD) {
        double wait = nres > 0 ? lua_tonumber(co, -nres) : 0;   /* the first value: seconds */
        lua_xmove(co, L, nres);
        held = nres;
        fd = pollfd_of(L, nres);
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
    if (wait_until(t + frame, fd)) {   /* the answer arrived: resume at once */
      wake_at = now();
      fd = -1;
    }
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
