/*
** json.c -- JSON text to native Lua values, in one pass.
**
** Why not lua-cjson's decode: under Lua 5.4 Debian's cjson returns every
** number as a float and null as a truthy sentinel, so its result needs a
** second walk; and it grows every table key by key (a rehash at 1, 2, 4, 8
** members). For a session body that cost more CPU than the whole HTTP
** exchange in libcurl. This decoder builds each table once, at its final
** size, with the module's rules applied as it goes:
**   - integral numbers within +-2^53 are integers, other numbers floats;
**   - null in an object drops the member; in an array it is the sentinel
**     (lightuserdata NULL, lua-cjson's null) so positions hold;
**   - strict RFC 8259 grammar; nesting deeper than IBKR_MAX_DEPTH fails.
** Strings are passed through byte for byte, raw control characters and
** invalid UTF-8 included (as lua-cjson does): Lua strings are bytes, and a
** gateway's odd byte must not cost the whole response.
**
** It raises (luaL_error) on bad input, so it only runs under lua_pcall.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ibkr.h"

#define TWO53 9007199254740992.0   /* 2^53: every integer below is exact in a double */
#define FLUSH 32                   /* members kept on the stack before a table is made */

typedef struct parser {
  lua_State *L;
  const char *p, *end, *start;
} parser;

static void value(parser *ps, int depth);

__attribute__((noreturn)) static void fail(parser *ps, const char *what) {
  luaL_error(ps->L, "invalid JSON: %s at byte %d", what, (int)(ps->p - ps->start) + 1);
  abort();   /* not reached */
}

static void skip_ws_slow(parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t'))
    ps->p++;
}

/* most tokens are not preceded by whitespace: test one byte before looping */
static inline void skip_ws(parser *ps) {
  if (ps->p < ps->end && (unsigned char)*ps->p <= ' ') skip_ws_slow(ps);
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static unsigned read_hex4(parser *ps) {
  unsigned v = 0;
  if (ps->end - ps->p < 4) fail(ps, "truncated \\u escape");
  for (int i = 0; i < 4; i++) {
    int h = hexval((unsigned char)ps->p[i]);
    if (h < 0) fail(ps, "bad \\u escape");
    v = v * 16 + (unsigned)h;
  }
  ps->p += 4;
  return v;
}

static void add_utf8(luaL_Buffer *b, unsigned cp) {
  char u[4];
  int n;
  if (cp < 0x80) { u[0] = (char)cp; n = 1; }
  else if (cp < 0x800) { u[0] = (char)(0xC0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
  else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
  } else {
    u[0] = (char)(0xF0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
  }
  luaL_addlstring(b, u, (size_t)n);
}

/* the slow path of a string: one with escapes, from q (just after the quote) */
static void string_escaped(parser *ps, const char *q) {
  luaL_Buffer b;
  luaL_buffinit(ps->L, &b);
  ps->p = q;
  for (;;) {
    const char *run = ps->p;
    while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\') ps->p++;
    luaL_addlstring(&b, run, (size_t)(ps->p - run));
    if (ps->p >= ps->end) fail(ps, "unterminated string");
    if (*ps->p == '"') break;
    ps->p++;                                      /* the backslash */
    if (ps->p >= ps->end) fail(ps, "unterminated string");
    switch (*ps->p++) {
      case '"': luaL_addchar(&b, '"'); break;
      case '\\': luaL_addchar(&b, '\\'); break;
      case '/': luaL_addchar(&b, '/'); break;
      case 'b': luaL_addchar(&b, '\b'); break;
      case 'f': luaL_addchar(&b, '\f'); break;
      case 'n': luaL_addchar(&b, '\n'); break;
      case 'r': luaL_addchar(&b, '\r'); break;
      case 't': luaL_addchar(&b, '\t'); break;
      case 'u': {
        unsigned cp = read_hex4(ps);
        if (cp >= 0xDC00 && cp <= 0xDFFF) fail(ps, "lone low surrogate");
        if (cp >= 0xD800 && cp <= 0xDBFF) {       /* must pair with a low surrogate */
          unsigned lo;
          if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') fail(ps, "lone high surrogate");
          ps->p += 2;
          lo = read_hex4(ps);
          if (lo < 0xDC00 || lo > 0xDFFF) fail(ps, "bad surrogate pair");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        add_utf8(&b, cp);
        break;
      }
      default: ps->p--; fail(ps, "bad escape");
    }
  }
  ps->p++;                                        /* the closing quote */
  luaL_pushresult(&b);
}

/* push the string starting at ps->p (on the opening quote) */
static void str(parser *ps) {
  const char *q = ++ps->p;
  const char *e = memchr(q, '"', (size_t)(ps->end - q));
  if (e != NULL && memchr(q, '\\', (size_t)(e - q)) == NULL) {   /* no escapes: the common case */
    lua_pushlstring(ps->L, q, (size_t)(e - q));
    ps->p = e + 1;
    return;
  }
  string_escaped(ps, q);
}

/*
** A number, checked against the JSON grammar. Integers are accumulated
** directly; anything with a fraction or exponent (or too long to be exact)
** goes through lua_stringtonumber, which copes with the C locale's decimal
** separator. Integral results within 2^53 become Lua integers either way.
*/
static void number(parser *ps) {
  const char *s = ps->p;
  int neg = 0, frac = 0, digits = 0;
  unsigned long long acc = 0;
  if (*ps->p == '-') { neg = 1; ps->p++; }
  if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') fail(ps, "bad number");
  if (*ps->p == '0') { ps->p++; digits = 1; }
  else {
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
      if (digits < 19) acc = acc * 10 + (unsigned)(*ps->p - '0');
      digits++;
      ps->p++;
    }
  }
  if (ps->p < ps->end && *ps->p == '.') {
    frac = 1;
    ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') fail(ps, "bad number");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    frac = 1;
    ps->p++;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') fail(ps, "bad number");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  if (!frac && digits < 16) {                     /* < 10^15 < 2^53: exact */
    lua_Integer v = (lua_Integer)acc;
    lua_pushinteger(ps->L, neg ? -v : v);
    return;
  }
  {
    char tmp[64];
    size_t n = (size_t)(ps->p - s);
    lua_Number x;
    if (n >= sizeof tmp) fail(ps, "number too long");
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (!frac) {                                  /* a long integer: as a float unless exact */
      x = strtod(tmp, NULL);
    } else {
      if (lua_stringtonumber(ps->L, tmp) == 0) fail(ps, "bad number");
      x = lua_tonumber(ps->L, -1);
      lua_pop(ps->L, 1);
    }
    if (x == floor(x) && fabs(x) < TWO53) lua_pushinteger(ps->L, (lua_Integer)x);
    else lua_pushnumber(ps->L, x);
  }
}

static void literal(parser *ps, const char *word, size_t n) {
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) fail(ps, "unexpected token");
  ps->p += n;
}

/*
** Objects and arrays: members wait on the stack (up to FLUSH pairs) and are
** then stored in a table made at once with the right size; a bigger object
** is flushed in chunks, so the stack stays small whatever the input.
*/
static void flush(lua_State *L, int tbl, int *made, int pending, int pairs, lua_Integer *next) {
  int base = lua_gettop(L) - pending * (pairs ? 2 : 1);
  if (!*made) {
    if (pairs) lua_createtable(L, 0, pending);
    else lua_createtable(L, pending, 0);
    lua_replace(L, tbl);                          /* the placeholder becomes the table */
    *made = 1;
  }
  if (pairs) {
    for (int i = 0; i < pending; i++) {
      lua_pushvalue(L, base + 1 + 2 * i);
      lua_pushvalue(L, base + 2 + 2 * i);
      lua_rawset(L, tbl);
    }
  } else {
    for (int i = 0; i < pending; i++) {
      lua_pushvalue(L, base + 1 + i);
      lua_rawseti(L, tbl, ++*next);
    }
  }
  lua_settop(L, base);
}

/*
** Open an object or array: room on the stack for a chunk of members and a
** placeholder for the table. Returns the placeholder's index, or 0 for an
** empty container, whose empty table is then already in place.
*/
static int open_container(parser *ps, int slots, char close) {
  lua_State *L = ps->L;
  luaL_checkstack(L, slots, "JSON nesting");
  lua_pushnil(L);
  ps->p++;
  skip_ws(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
    lua_createtable(L, 0, 0);
    lua_replace(L, -2);
    return 0;
  }
  return lua_gettop(L);
}

static void object(parser *ps, int depth) {
  lua_State *L = ps->L;
  int made = 0, pending = 0;
  int tbl = open_container(ps, 2 * FLUSH + 8, '}');
  if (tbl == 0) return;
  for (;;) {
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"') fail(ps, "expected a member name");
    str(ps);
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != ':') fail(ps, "expected ':'");
    ps->p++;
    skip_ws(ps);
    value(ps, depth);
    if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL) {
      lua_pop(L, 1);                              /* null member: absent, so store nil */
      lua_pushnil(L);                             /* (which also undoes an earlier duplicate) */
    }
    if (++pending == FLUSH) {
      flush(L, tbl, &made, pending, 1, NULL);
      pending = 0;
    }
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
    if (ps->p < ps->end && *ps->p == '}') { ps->p++; break; }
    fail(ps, "expected ',' or '}'");
  }
  flush(L, tbl, &made, pending, 1, NULL);
}

static void array(parser *ps, int depth) {
  lua_State *L = ps->L;
  int made = 0, pending = 0;
  lua_Integer next = 0;
  int tbl = open_container(ps, FLUSH + 8, ']');
  if (tbl == 0) return;
  for (;;) {
    skip_ws(ps);
    value(ps, depth);
    if (++pending == FLUSH) {
      flush(L, tbl, &made, pending, 0, &next);
      pending = 0;
    }
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
    if (ps->p < ps->end && *ps->p == ']') { ps->p++; break; }
    fail(ps, "expected ',' or ']'");
  }
  flush(L, tbl, &made, pending, 0, &next);
}

static void value(parser *ps, int depth) {
  if (ps->p >= ps->end) fail(ps, "unexpected end");
  switch (*ps->p) {
    case '{':
      if (depth >= IBKR_MAX_DEPTH) fail(ps, "nested too deep");
      object(ps, depth + 1);
      break;
    case '[':
      if (depth >= IBKR_MAX_DEPTH) fail(ps, "nested too deep");
      array(ps, depth + 1);
      break;
    case '"': str(ps); break;
    case 't': literal(ps, "true", 4); lua_pushboolean(ps->L, 1); break;
    case 'f': literal(ps, "false", 5); lua_pushboolean(ps->L, 0); break;
    case 'n': literal(ps, "null", 4); lua_pushlightuserdata(ps->L, NULL); break;
    default:
      if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) number(ps);
      else fail(ps, "unexpected character");
  }
}

/* protected part of ibkr_decode: (text) -> value */
static int decode_p(lua_State *L) {
  parser ps;
  size_t len;
  ps.L = L;
  ps.start = ps.p = lua_touserdata(L, 1);
  len = (size_t)lua_tointeger(L, 2);
  ps.end = ps.p + len;
  lua_settop(L, 0);
  skip_ws(&ps);
  value(&ps, 0);
  skip_ws(&ps);
  if (ps.p != ps.end) fail(&ps, "trailing characters");
  return 1;
}

/*
** Decode s[0..len). Pushes the value and returns 1, or pushes the message
** and returns 0. Runs under lua_pcall, so neither bad JSON nor a memory
** error escapes as a raise. The text is read in place (it is the session's
** C buffer, or a Lua string the caller keeps on its stack).
*/
int ibkr_decode(lua_State *L, const char *s, size_t len) {
  lua_pushcfunction(L, decode_p);
  lua_pushlightuserdata(L, (void *)s);
  lua_pushinteger(L, (lua_Integer)len);
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
