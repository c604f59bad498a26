/*
** error.c -- the error objects of ibkr: plain tables with the "ibkr.error"
** metatable, so that fields are ordinary Lua values and tostring() gives one
** readable line; the list of kinds the core reports (core.kinds); and the
** one way a message is made: texts that come from outside -- the gateway's
** "error" field, an HTML page's title, a redirect target, libcurl's error
** buffer, a Lua caller's message -- lose URL userinfo and become one
** printable, bounded line (lib/text.c's rules, pushed here). tostring()
** applies it again to each field it prints, so an error a user modified
** still prints one line.
** Adds to the module: core.error, core.is_error, core.printable, core.kinds.
** Called by: core.c, request.c, session.c, message.c, json.c, websocket.c.
** Calls: lib/text.c.
*/
#include <string.h>

#include "ibkr.h"
#include "lib/text.h"

static const char *const kind_names[] = {
#define IBKR_KIND_NAME(id, name) name,
  IBKR_KINDS(IBKR_KIND_NAME)
#undef IBKR_KIND_NAME
  NULL
};

void error_seti(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

void error_sets(lua_State *L, const char *k, const char *v) {
  if (v == NULL) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* ------------------------------------------------------------ message text */

/* Push s[0..len) made one printable line of at most max bytes (plus an
** ellipsis when cut): lib/text.c's rule. Returns the pushed string. */
const char *error_push_printable(lua_State *L, const char *s, size_t len, size_t max) {
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, text_printable_room(len, max));
  luaL_pushresultsize(&b, text_printable(s, len, max, p));
  return lua_tostring(L, -1);
}

static void push_without_userinfo(lua_State *L, const char *s, size_t n) {
  char *t = lua_newuserdatauv(L, n + 1, 0);      /* collected, whatever raises */
  lua_pushlstring(L, t, text_strip_userinfo(s, n, t));
  lua_remove(L, -2);
}

/* push a message made from s[0..n): no URL userinfo, printable, bounded */
void error_push_message(lua_State *L, const char *s, size_t n) {
  push_without_userinfo(L, s, n);
  s = lua_tolstring(L, -1, &n);
  error_push_printable(L, s, n, IBKR_MSG_MAX);
  lua_remove(L, -2);
}

/* raw t[k] as printable text pushed on the stack, or nothing (returns 0)
** when it is neither a string nor a number */
static int push_printable_field(lua_State *L, int t, const char *k, size_t max) {
  size_t n;
  const char *s;
  lua_pushstring(L, k);
  lua_rawget(L, t);
  if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER) {
    lua_pop(L, 1);
    return 0;
  }
  s = lua_tolstring(L, -1, &n);                   /* converts the copy, not the field */
  error_push_printable(L, s, n, max);
  lua_remove(L, -2);
  return 1;
}

/* make the message field of the error table at idx a message (core.error) */
void error_sanitize(lua_State *L, int idx) {
  size_t n;
  const char *s;
  idx = lua_absindex(L, idx);
  lua_pushliteral(L, "message");
  lua_pushliteral(L, "message");
  if (lua_rawget(L, idx) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
    s = lua_tolstring(L, -1, &n);                 /* converts the copy, not the field */
    error_push_message(L, s, n);
    lua_remove(L, -2);
    lua_rawset(L, idx);
  } else
    lua_pop(L, 2);
}

/* ----------------------------------------------------------- error objects */

/*
** Push a new error table {kind=, message=, method=, path=}; kind is one of
** KIND_*; method and path are copied from the given stack slots when those
** hold strings (0 = none). The message is made printable and bounded,
** without URL userinfo.
*/
int error_push(lua_State *L, int kind, const char *message, int methodidx, int pathidx) {
  if (methodidx < 0) methodidx = lua_absindex(L, methodidx);
  if (pathidx < 0) pathidx = lua_absindex(L, pathidx);
  lua_createtable(L, 0, 8);
  error_sets(L, "kind", kind_names[kind]);
  if (message) {
    error_push_message(L, message, strlen(message));
    lua_setfield(L, -2, "message");
  }
  if (methodidx && lua_type(L, methodidx) == LUA_TSTRING) {
    lua_pushvalue(L, methodidx);
    lua_setfield(L, -2, "method");
  }
  if (pathidx && lua_type(L, pathidx) == LUA_TSTRING) {
    lua_pushvalue(L, pathidx);
    lua_setfield(L, -2, "path");
  }
  luaL_setmetatable(L, ERROR_MT);
  return 1;
}

/* the usual failure tuple: nil, err */
int error_fail(lua_State *L, int kind, const char *message, int methodidx, int pathidx) {
  lua_pushnil(L);
  error_push(L, kind, message, methodidx, pathidx);
  return 2;
}

/*
** tostring(err): "ibkr: <kind>: <METHOD> <path>: <message>". Only these four
** fields are ever printed (never headers, bodies or URLs, which may carry
** credentials); each is read with rawget and made printable and bounded, so
** an error a user built or modified still prints one line and runs no code.
*/
static int error_tostring(lua_State *L) {
  int base;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushliteral(L, "ibkr: ");
  if (!push_printable_field(L, 1, "kind", 64)) lua_pushliteral(L, "error");
  lua_pushliteral(L, ": ");
  base = lua_gettop(L);
  if (push_printable_field(L, 1, "method", 64)) lua_pushliteral(L, " ");
  if (!push_printable_field(L, 1, "path", IBKR_MSG_MAX) && lua_gettop(L) > base)
    lua_pop(L, 1);                                /* the " " after the method */
  if (lua_gettop(L) == base) lua_pop(L, 1);       /* the ": ": no method, no path */
  lua_pushliteral(L, ": ");
  if (!push_printable_field(L, 1, "message", IBKR_MSG_MAX)) lua_pop(L, 1);
  lua_concat(L, lua_gettop(L) - 1);
  return 1;
}

/* ------------------------------------------------------------ module functions */

/* core.error(t): makes table t (with a string kind) an error object */
static int core_error(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 1, "error needs a string 'kind'");
  lua_settop(L, 1);
  error_sanitize(L, 1);                         /* one printable, bounded line */
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

/* core.printable(text [, max]) -> text as one printable line of at most max
** (default IBKR_MSG_MAX) bytes and without URL userinfo, as messages are, for
** callers that print gateway texts or URLs */
static int core_printable(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer max = luaL_optinteger(L, 2, IBKR_MSG_MAX);
  luaL_argcheck(L, max >= 1, 2, "must be positive");
  push_without_userinfo(L, s, n);
  s = lua_tolstring(L, -1, &n);
  error_push_printable(L, s, n, (size_t)max);
  return 1;
}

static const luaL_Reg error_funcs[] = {
  {"error", core_error},
  {"is_error", core_is_error},
  {"printable", core_printable},
  {NULL, NULL}
};

/* the "ibkr.error" metatable, core.error, core.is_error, core.printable and
** core.kinds (an array of the kind names above) in the module at the top */
int error_open(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, error_funcs, 0);
  lua_createtable(L, KIND_COUNT, 0);
  for (int i = 0; i < KIND_COUNT; i++) {
    lua_pushstring(L, kind_names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "kinds");
  return 0;
}
