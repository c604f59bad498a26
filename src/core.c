/*
** core.c -- the ibkr.core module: luaopen, the module table, and the
** module functions that belong to no class (clock, sleep, poll, libcurl's
** version). Every Lua-facing file registers itself the same way, the way
** luasocket's luasocket.c does: an `xxx_open(L)` that adds its functions
** and classes to the module table on the top of the stack, listed once in
** mods[] below. A C function implementing `core.name` is named core_name,
** in whichever file it lives.
** Called by: Lua (require "ibkr.core").
** Calls: error.c, json.c, wire.c, session.c, request.c, websocket.c, signal.c, oauth.c, proc.c, lib/engine.c.
*/
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "ibkr.h"
#include "lib/clock.h"
#include "lib/engine.h"

static int core_monotonic(lua_State *L) {
  lua_pushnumber(L, (lua_Number)clock_now());
  return 1;
}

/* poll(2) refused n descriptors: say why (EINVAL: more than the open-file limit) */
static int poll_failed(lua_State *L, lua_Integer n) {
  struct rlimit lim;
  int err = errno;
  if (err == EINVAL && getrlimit(RLIMIT_NOFILE, &lim) == 0)
    return luaL_error(L, "core.poll: %I descriptors, more than the open-file limit (%I)", (LUAI_UACINT)n,
                      (LUAI_UACINT)lim.rlim_cur);
  return luaL_error(L, "core.poll: %s", strerror(err));
}

/* core.sleep(seconds): the whole time, unless a signal handler asks Lua to
** stop meanwhile (lua5.4's SIGINT: then at once, see signal.c) */
static int core_sleep(lua_State *L) {
  double secs = luaL_checknumber(L, 1);
  struct timespec t;
  sigmark mark;
  if (!(secs > 0)) return 0;
  if (secs > 1e9) secs = 1e9;
  t.tv_sec = (time_t)secs;
  t.tv_nsec = (long)((secs - (double)t.tv_sec) * 1e9);
  signal_mark(L, &mark);
  while (nanosleep(&t, &t) != 0 && errno == EINTR && !signal_asked(&mark)) {}
  return 0;
}

/* poll(2)'s events for the events string on the top of the stack: "r", "w", "rw" (or "wr") */
static short poll_arg_events(lua_State *L) {
  const char *ev = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
  if (strcmp(ev, "r") == 0) return POLLIN;
  if (strcmp(ev, "w") == 0) return POLLOUT;
  if (strcmp(ev, "rw") == 0 || strcmp(ev, "wr") == 0) return POLLIN | POLLOUT;
  luaL_argerror(L, 3, lua_pushfstring(L, "events must be \"r\", \"w\" or \"rw\", not %s",
                                      lua_type(L, -1) == LUA_TSTRING ? ev : luaL_typename(L, -1)));
  return 0;
}

/*
** core.poll(fds [, timeout [, events]]) -> i, ...: wait until one of the
** descriptors in the array fds is ready (readable, or what events[i] says:
** "r", "w" or "rw"; closed or in error counts too), or timeout seconds
** passed (nil: no limit). Returns the positions in fds of those that are
** ready (nothing on a timeout or a signal). What ibkr.run waits with. A
** descriptor that is not an integer 0..INT_MAX, a timeout that is NaN or
** negative, and a poll(2) that fails (more descriptors than the open-file
** limit) raise: an answer of "nothing ready" would make a host loop spin.
*/
static int core_poll(lua_State *L) {
  struct pollfd small[16], *p = small;
  lua_Integer n;
  double t = luaL_optnumber(L, 2, -1);
  int ms = -1, got, k = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_argcheck(L, lua_isnoneornil(L, 2) || t >= 0, 2, "timeout must be a number >= 0, or nil");
  luaL_argcheck(L, lua_isnoneornil(L, 3) || lua_type(L, 3) == LUA_TTABLE, 3,
                "events must be a table of \"r\", \"w\" or \"rw\" by position, or nil");
  n = luaL_len(L, 1);
  if (n < 0 || n > 100000) return luaL_argerror(L, 1, "too many descriptors");
  if (n > 16) p = lua_newuserdatauv(L, sizeof *p * (size_t)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    int isnum;
    lua_Integer fd;
    lua_geti(L, 1, i + 1);
    fd = lua_tointegerx(L, -1, &isnum);
    if (!isnum) return luaL_argerror(L, 1, "descriptors must be integers");
    p[i].fd = ibkr_checkfd(L, 1, fd);
    p[i].events = POLLIN;
    p[i].revents = 0;
    lua_pop(L, 1);
    if (lua_type(L, 3) == LUA_TTABLE && lua_geti(L, 3, i + 1) != LUA_TNIL) p[i].events = poll_arg_events(L);
    lua_pop(L, lua_type(L, 3) == LUA_TTABLE ? 1 : 0);
  }
  if (t >= 0) ms = t > 2e6 ? 2000000000 : (int)ceil(t * 1000);
  got = poll(p, (nfds_t)n, ms);
  proc_reap_pending();                          /* children released before they ended */
  if (got < 0 && errno != EINTR) return poll_failed(L, n);
  if (got > 0) luaL_checkstack(L, got, "too many ready descriptors");
  for (lua_Integer i = 0; got > 0 && i < n; i++)
    if (p[i].revents) {
      lua_pushinteger(L, i + 1);
      k++;
    }
  return k;
}

static int core_curl_version(lua_State *L) {
  lua_pushstring(L, curl_version());
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"monotonic", core_monotonic},
  {"sleep", core_sleep},
  {"poll", core_poll},
  {"curl_version", core_curl_version},
  {NULL, NULL}
};

/* core.c's own part: the functions above and _VERSION */
static int core_open(lua_State *L) {
  luaL_setfuncs(L, core_funcs, 0);
  lua_pushliteral(L, IBKR_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 0;
}

/* every part of the module, each adding itself to the module table */
static const luaL_Reg mods[] = {
  {"core", core_open},          /* monotonic, sleep, poll, curl_version, _VERSION */
  {"error", error_open},        /* error, is_error, printable, kinds; the ibkr.error class */
  {"json", json_open},          /* decode, encode, null, empty_array, array_mt */
  {"wire", wire_open},          /* check_path, check_headers */
  {"session", session_open},    /* new; the ibkr.session class */
  {"request", request_open},    /* the ibkr.request class */
  {"websocket", websocket_open}, /* s:websocket (after session: it adds to that class); ibkr.websocket */
  {"signal", signal_open},      /* signal_catch, signal_caught, signal_wait */
  {"oauth", oauth_open},        /* oauth (a table); the ibkr.oauth class */
  {"proc", proc_open},          /* spawn; the ibkr.proc class */
  {NULL, NULL}
};

IBKR_API int luaopen_ibkr_core(lua_State *L) {
  luaL_checkversion(L);
  if (!engine_init()) return luaL_error(L, "curl_global_init failed");
  lua_createtable(L, 0, 32);                    /* M */
  for (int i = 0; mods[i].name; i++) mods[i].func(L);
  return 1;
}
