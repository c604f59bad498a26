/*
** decode.c -- JSON text to native Lua values: a private lua-cjson instance
** does the parsing, then one walk normalises what cjson leaves behind.
*/
#include <math.h>

#include "ibkr.h"

#define TWO53 9007199254740992.0   /* 2^53: every integer below is exact in a double */

/*
** Debian's lua-cjson 2.1.0 returns every number as a float under 5.4, and
** JSON null as a truthy lightuserdata. Walk the decoded tree once: integral
** floats within +-2^53 become integers; nulls vanish from objects (string
** keys) and stay as the sentinel in arrays (integer keys) so positions hold.
** Assigning to existing fields during lua_next is allowed (manual, next).
*/
static void normalize(lua_State *L, int t, int depth) {
  if (depth > IBKR_MAX_DEPTH) return;     /* cjson already refused deeper */
  luaL_checkstack(L, 4, "JSON too deep");
  lua_pushnil(L);
  while (lua_next(L, t)) {                /* t.., k, v */
    int vt = lua_type(L, -1);
    if (vt == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number x = lua_tonumber(L, -1);
      if (x == floor(x) && fabs(x) < TWO53) {
        lua_pushvalue(L, -2);                         /* k, v, k */
        lua_pushinteger(L, (lua_Integer)x);           /* k, v, k, i */
        lua_rawset(L, t);                             /* k, v */
      }
    } else if (vt == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL) {
      if (lua_type(L, -2) != LUA_TNUMBER) {           /* object member */
        lua_pushvalue(L, -2);
        lua_pushnil(L);
        lua_rawset(L, t);
      }
    } else if (vt == LUA_TTABLE) {
      normalize(L, lua_gettop(L), depth + 1);
    }
    lua_pop(L, 1);                                    /* k */
  }
}

/* protected part of ibkr_decode: decode(text) then normalise */
static int decode_p(lua_State *L) {     /* decode, text */
  lua_call(L, 1, 1);                    /* value */
  if (lua_type(L, -1) == LUA_TTABLE)
    normalize(L, lua_gettop(L), 1);
  else if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
    lua_Number x = lua_tonumber(L, -1);
    if (x == floor(x) && fabs(x) < TWO53) {
      lua_pop(L, 1);
      lua_pushinteger(L, (lua_Integer)x);
    }
  }
  return 1;
}

/*
** Decode s[0..len) with the cjson decode function at decodeidx. Pushes the
** value and returns 1, or pushes cjson's message and returns 0. Runs under
** lua_pcall, so neither bad JSON nor a memory error escapes as a raise.
*/
int ibkr_decode(lua_State *L, int decodeidx, const char *s, size_t len) {
  decodeidx = lua_absindex(L, decodeidx);
  lua_pushcfunction(L, decode_p);
  lua_pushvalue(L, decodeidx);
  lua_pushlstring(L, s, len);
  return lua_pcall(L, 2, 1, 0) == LUA_OK;
}

/* encode the value at validx to JSON text with the private cjson; raises on failure */
int ibkr_encode(lua_State *L, int encodeidx, int validx) {
  validx = lua_absindex(L, validx);
  lua_pushvalue(L, encodeidx);
  lua_pushvalue(L, validx);
  lua_call(L, 1, 1);
  return 1;
}
