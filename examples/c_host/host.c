/*
 * A C program embedding Lua 5.4 that keeps an IBKR gateway session alive from its own poll(2)
 * loop, next to its own work (here a 10 ms "frame", as a game loop or a GUI would have).
 *
 *   mkdir -p build && cc -o build/c_host examples/c_host/host.c $(pkg-config --cflags --libs lua5.4)
 *   IBKR_ROOT=. build/c_host [BASE_URL] [SECONDS]
 *
 * IBKR_ROOT (default ".") is where lua/ and ibkr/core.so are when ibkr is not installed; BASE_URL
 * defaults to $IBKR_BASE_URL, then ibkr's default. SECONDS (default: until SIGINT/SIGTERM) ends it.
 * The steps, as docs/hosts.md ("A C host with poll(2)") shows them:
 *   1. the keep-alive coroutine, from ibkr's Lua API (setup);
 *   2. lua_resume: LUA_YIELD with the seconds until the next resume and, while a request is in
 *      flight, the request (resume_keepalive);
 *   3. the request's descriptor, what to wait for on it, and its timeout (read_pollable);
 *   4. the yielded values popped before the next resume;
 *   5. poll(2) on the descriptor until the next frame or the keep-alive's time (wait_until).
 * At the end the coroutine is closed (which frees a request in flight), then the session.
 * Printed: the session's states, then frames, resumes, how many the descriptor woke, the frames
 * run while a request was in flight, the first resume (it starts the engine thread and the
 * connection) and the longest after it.
 */
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t stopping = 0;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* the keep-alive's callbacks, in C: on_state(new, old), on_error(err) */
static int on_state(lua_State *L) {
  printf("session %s -> %s\n", luaL_optstring(L, 2, "(start)"), luaL_checkstring(L, 1));
  fflush(stdout);
  return 0;
}
static int on_error(lua_State *L) {
  fprintf(stderr, "keep-alive: %s\n", luaL_tolstring(L, 1, NULL));
  return 0;
}

/*
 * 1. setup(root, url) -> s, co: run protected (lua_pcall), so any error comes back as a message.
 *      package.path/cpath += root's lua/ and ./?.so
 *      local s = require("ibkr").new{ base_url = url }
 *      local co = s:keepalive{ interval = 60, on_state = on_state, on_error = on_error }
 */
static int setup(lua_State *L) {
  const char *root = luaL_checkstring(L, 1);
  lua_settop(L, 2);
  lua_getglobal(L, "package");                              /* root url package */
  lua_getfield(L, 3, "path");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", root, root, lua_tostring(L, -1));
  lua_setfield(L, 3, "path");
  lua_getfield(L, 3, "cpath");
  lua_pushfstring(L, "%s/?.so;%s", root, lua_tostring(L, -1));
  lua_setfield(L, 3, "cpath");
  lua_settop(L, 2);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ibkr");
  lua_call(L, 1, 1);                                        /* root url ibkr */
  lua_getfield(L, 3, "new");
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "base_url");
  lua_call(L, 1, 1);                                        /* root url ibkr s */
  lua_getfield(L, 4, "keepalive");
  lua_pushvalue(L, 4);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, 60);
  lua_setfield(L, -2, "interval");
  lua_pushcfunction(L, on_state);
  lua_setfield(L, -2, "on_state");
  lua_pushcfunction(L, on_error);
  lua_setfield(L, -2, "on_error");
  lua_call(L, 2, 1);                                        /* root url ibkr s co */
  return 2;
}

/* What the keep-alive waits for before its next resume. */
struct wait {
  double wake_at;   /* resume at this time (monotonic seconds) ... */
  int fd;           /* ... or when this descriptor is ready (-1: none) */
  short events;     /* POLLIN and/or POLLOUT */
};

/* req:<name>() on L, the request at index req; leaves the result (or the error) on the top */
static int call_method(lua_State *L, int req, const char *name) {
  lua_getfield(L, req, name);
  lua_pushvalue(L, req);
  return lua_pcall(L, 1, 1, 0) == LUA_OK;
}

/* 3. The request at index req: its descriptor, what to wait for on it, and its timeout. */
static void read_pollable(lua_State *L, int req, struct wait *w) {
  if (call_method(L, req, "pollfd") && lua_isinteger(L, -1)) w->fd = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (w->fd < 0) return;                       /* none to watch: resume after the seconds */
  w->events = POLLIN;
  if (call_method(L, req, "events") && lua_type(L, -1) == LUA_TSTRING) {
    const char *ev = lua_tostring(L, -1);
    w->events = (short)((strchr(ev, 'r') ? POLLIN : 0) | (strchr(ev, 'w') ? POLLOUT : 0));
  }
  lua_pop(L, 1);
  if (call_method(L, req, "timeout") && lua_type(L, -1) == LUA_TNUMBER)
    w->wake_at = now() + lua_tonumber(L, -1);  /* resume then even if it never becomes ready */
  else
    w->wake_at = 1e300;                        /* no timeout: only when it is ready */
  lua_pop(L, 1);
}

/*
 * 2. and 4. Resumes co; fills *w. Returns lua_resume's status: LUA_YIELD (it waits), LUA_OK (it
 * ended) or an error (its message moved to L's top). Functions cannot be called on a suspended
 * coroutine: the yielded values are moved to L (lua_xmove takes them off co's stack, where they
 * must not be left for the next resume), read there, then popped. The coroutine itself keeps
 * its request, and the descriptor open, until its next resume.
 */
static int resume_keepalive(lua_State *L, lua_State *co, struct wait *w) {
  int nres = 0, top = lua_gettop(L);
  int st = lua_resume(co, L, 0, &nres);
  w->fd = -1;
  if (st != LUA_YIELD) {
    if (st != LUA_OK) lua_xmove(co, L, 1);     /* the error message */
    else lua_pop(co, nres);                    /* what it returned */
    return st;
  }
  lua_xmove(co, L, nres);                       /* seconds [, request] now on L */
  w->wake_at = now() + (nres >= 1 ? lua_tonumber(L, top + 1) : 0);  /* the first value: seconds */
  if (nres >= 2 && !lua_isnil(L, top + 2)) read_pollable(L, top + 2, w);
  lua_settop(L, top);                           /* 4. popped */
  return st;
}

/* 5. Waits in poll(2) until `until` (monotonic seconds), on w's descriptor when there is one
** (a signal ends it early too); returns whether the descriptor is ready. */
static int wait_until(const struct wait *w, double until) {
  double left = until - now();
  struct pollfd p = { w->fd, w->events, 0 };
  return poll(&p, w->fd >= 0 ? 1 : 0, left > 0 ? (int)(left * 1000) + 1 : 0) > 0;
}

int main(int argc, char **argv) {
  const char *root = getenv("IBKR_ROOT"), *url = argc > 1 ? argv[1] : getenv("IBKR_BASE_URL");
  double seconds = argc > 2 ? atof(argv[2]) : 0;  /* 0: until a signal */
  const double frame = 0.010;
  double start = now(), next_frame = start + frame, first = -1, longest = 0;
  long frames = 0, frames_in_flight = 0, resumes = 0, woken = 0;
  struct wait w = { start, -1, 0 };
  int ready = 0, rc = 0;
  lua_State *L = luaL_newstate(), *co;
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  luaL_openlibs(L);
  lua_pushcfunction(L, setup);
  lua_pushstring(L, root ? root : ".");
  lua_pushstring(L, url);                      /* NULL pushes nil: ibkr's default */
  if (lua_pcall(L, 2, 2, 0) != LUA_OK) {
    fprintf(stderr, "c_host: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 1;
  }
  co = lua_tothread(L, 2);                      /* L's stack: s co -- kept there to the end */
  while (!stopping && !(seconds > 0 && now() - start >= seconds)) {
    double t = now(), until;
    if (ready || t >= w.wake_at) {              /* its answer is there, or its time came */
      int st = resume_keepalive(L, co, &w);
      double d = now() - t;
      resumes++;
      ready = 0;
      if (first < 0) first = d;                /* it starts the engine and the connection */
      else if (d > longest) longest = d;
      if (st == LUA_OK) { puts("keep-alive ended"); break; }
      if (st != LUA_YIELD) { fprintf(stderr, "c_host: keep-alive raised: %s\n", lua_tostring(L, -1)); rc = 1; break; }
    }
    if (now() >= next_frame) {                  /* ... the host's own work for this frame ... */
      frames++;
      if (w.fd >= 0) frames_in_flight++;
      next_frame += frame;
    }
    until = w.wake_at < next_frame ? w.wake_at : next_frame;
    if (seconds > 0 && start + seconds < until) until = start + seconds;
    if (wait_until(&w, until)) {                /* the answer is there: resume at once */
      ready = 1;
      woken++;
      w.fd = -1;
    }
  }
  /* the end: close the coroutine (frees a request in flight), then the session */
#if LUA_VERSION_RELEASE_NUM >= 50406
  lua_closethread(co, L);
#else
  lua_resetthread(co);
#endif
  if (!call_method(L, 1, "close")) { fprintf(stderr, "c_host: %s\n", lua_tostring(L, -1)); rc = 1; }
  printf("frames: %ld, resumes: %ld, woken by the descriptor: %ld, frames while a request was in flight: %ld, "
         "first resume: %.3f ms, longest after it: %.3f ms\n", frames, resumes, woken, frames_in_flight,
         first * 1000, longest * 1000);
  lua_close(L);
  return rc;
}
