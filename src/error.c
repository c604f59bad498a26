/*
** error.c -- the error objects of ibkr: plain tables with the "ibkr.error"
** metatable, so that fields are ordinary Lua values and tostring() gives one
** readable line.
*/
#include <string.h>

#include "ibkr.h"

void ibkr_seti(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

void ibkr_sets(lua_State *L, const char *k, const char *v) {
  if (v == NULL) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/*
** Push a new error table {kind=, message=, method=, path=}; method and path
** are copied from the given stack slots when those hold strings (0 = none).
*/
int ibkr_push_error(lua_State *L, const char *kind, const char *message,
                    int methodidx, int pathidx) {
  if (methodidx < 0) methodidx = lua_absindex(L, methodidx);
  if (pathidx < 0) pathidx = lua_absindex(L, pathidx);
  lua_createtable(L, 0, 8);
  ibkr_sets(L, "kind", kind);
  ibkr_sets(L, "message", message);
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
int ibkr_fail(lua_State *L, const char *kind, const char *message, int methodidx, int pathidx) {
  lua_pushnil(L);
  ibkr_push_error(L, kind, message, methodidx, pathidx);
  return 2;
}

/*
** tostring(err): "ibkr: <kind>: <METHOD> <path>: <message>". Reads the
** fields with rawget so a user-modified error still prints.
*/
static int error_tostring(lua_State *L) {
  luaL_Buffer b;
  const char *kind, *method, *path, *msg;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "method");
  lua_getfield(L, 1, "path");
  lua_getfield(L, 1, "message");
  kind = lua_tostring(L, 2);
  method = lua_tostring(L, 3);
  path = lua_tostring(L, 4);
  msg = lua_tostring(L, 5);
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "ibkr: ");
  luaL_addstring(&b, kind ? kind : "error");
  if (method || path) {
    luaL_addstring(&b, ": ");
    if (method) luaL_addstring(&b, method);
    if (method && path) luaL_addchar(&b, ' ');
    if (path) luaL_addstring(&b, path);
  }
  if (msg) {
    luaL_addstring(&b, ": ");
    luaL_addstring(&b, msg);
  }
  luaL_pushresult(&b);
  return 1;
}

void ibkr_error_register(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}
