/*
** core.c -- the ibkr.core module: luaopen, the module table and the
** module-level functions (clock, sleep, poll, errors, decode). Each class
** registers itself from the mods[] table below, the way luasocket's
** luasocket.c does: session.c (core.new, the session class), request.c
** (the request class), error.c (error objects).
*/
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ibkr.h"
#include "proc.h"

static int core_error(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 1, "error needs a string 'kind'");
  lua_settop(L, 1);
  ibkr_error_sanitize(L, 1);                    /* one printable, bounded line */
  luaL_setmetatable(L, ERROR_MT);
  return 1;
}

static int core_is_error(lua_State *L) {
  int r = 0;
  if (lua_getmetatable(L, 1)) {
    luaL_getmetatable(L, ERROR_MT);
    r = lua_rawequal(L, -1, -2);
  }
  lua_pushboolean(L, r);
  return 1;
}

static int core_monotonic(lua_State *L) {
  lua_pushnumber(L, (lua_Number)ibkr_now());
  return 1;
}

static int core_sleep(lua_State *L) {
  double secs = luaL_checknumber(L, 1);
  struct timespec t;
  if (!(secs > 0)) return 0;
  if (secs > 1e9) secs = 1e9;
  t.tv_sec = (time_t)secs;
  t.tv_nsec = (long)((secs - (double)t.tv_sec) * 1e9);
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
  return 0;
}

/*
** core.poll(fds [, timeout [, events]]) -> i, ...: wait until one of the
** descriptors in the array fds is ready (readable, or what events[i] says:
** "r", "w" or "rw"; closed or in error counts too), or timeout seconds
** passed (nil: no limit). Returns the positions in fds of those that are
** ready (nothing on a timeout or a signal). What ibkr.run waits with.
*/
static int core_poll(lua_State *L) {
  struct pollfd small[16], *p = small;
  lua_Integer n;
  double t = luaL_optnumber(L, 2, -1);
  int ms = -1, got, k = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  n = luaL_len(L, 1);
  if (n < 0 || n > 100000) return luaL_argerror(L, 1, "too many descriptors");
  if (n > 16) p = lua_newuserdatauv(L, sizeof *p * (size_t)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    int isnum;
    lua_geti(L, 1, i + 1);
    p[i].fd = (int)lua_tointegerx(L, -1, &isnum);
    if (!isnum) return luaL_argerror(L, 1, "descriptors must be integers");
    p[i].events = POLLIN;
    p[i].revents = 0;
    lua_pop(L, 1);
    if (lua_type(L, 3) == LUA_TTABLE && lua_geti(L, 3, i + 1) != LUA_TNIL) {
      const char *ev = lua_tostring(L, -1);
      if (ev == NULL || ev[0] == '\0' || ev[strspn(ev, "rw")] != '\0')
        return luaL_argerror(L, 3, "events must be \"r\", \"w\" or \"rw\"");
      p[i].events = (short)((strchr(ev, 'r') ? POLLIN : 0) | (strchr(ev, 'w') ? POLLOUT : 0));
    }
    lua_pop(L, lua_type(L, 3) == LUA_TTABLE ? 1 : 0);
  }
  if (t >= 0) ms = t > 2e6 ? 2000000000 : (int)ceil(t * 1000);
  got = poll(p, (nfds_t)n, ms);
  if (got > 0) luaL_checkstack(L, got, "too many ready descriptors");
  for (lua_Integer i = 0; got > 0 && i < n; i++)
    if (p[i].revents) {
      lua_pushinteger(L, i + 1);
      k++;
    }
  return k;
}

/* core.check_headers(t): the header rule of core.new, for callers that want
** to refuse bad per-call headers before anything else happens */
static int core_check_path(lua_State *L) {
  wire_check_path(L, 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int core_check_headers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  wire_check_headers(L, 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int core_curl_version(lua_State *L) {
  lua_pushstring(L, curl_version());
  return 1;
}

static int core_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (ibkr_decode(L, s, n)) return 1;
  {
    const char *msg = lua_tostring(L, -1);
    return ibkr_fail(L, "json", msg ? msg : "invalid JSON", 0, 0);
  }
}

static const luaL_Reg core_funcs[] = {
  {"error", core_error},
  {"is_error", core_is_error},
  {"monotonic", core_monotonic},
  {"sleep", core_sleep},
  {"poll", core_poll},
  {"curl_version", core_curl_version},
  {"check_headers", core_check_headers},
  {"check_path", core_check_path},
  {"decode", core_decode},
  {"null", NULL},
  {"_VERSION", NULL},
  {NULL, NULL}
};

/* each part registers its class (and functions) with the module on the
** top of the stack */
static void error_open(lua_State *L) { ibkr_error_register(L); }

static const struct {
  const char *name;
  void (*open)(lua_State *L);
} mods[] = {
  {"error", error_open},
  {"session", session_open},
  {"request", request_open},
  {"proc", proc_open},                        /* core.spawn (proc.c) */
  {NULL, NULL}
};

/*
** luaopen: each part registers itself (mods[]); JSON both ways is json.c's
** (decode, encode, null, empty_array, array_mt), error objects error.c's.
*/
IBKR_API int luaopen_ibkr_core(lua_State *L) {
  luaL_checkversion(L);
  if (!xfer_global_init()) return luaL_error(L, "curl_global_init failed");
  luaL_newlibtable(L, core_funcs);              /* M */
  for (int i = 0; mods[i].name; i++) mods[i].open(L);
  luaL_setfuncs(L, core_funcs, 0);              /* M */
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_pushliteral(L, IBKR_VERSION);
  lua_setfield(L, -2, "_VERSION");
  ibkr_json_open(L);
  ibkr_error_open(L);
  ibkr_signal_open(L);
  ibkr_oauth_open(L);                           /* [oauth] M.oauth (src/oauth.c) */
  return 1;
}
