/*
** json.c -- JSON both ways, one set of rules (docs/json.md): response text
** to native Lua values in one pass (decoding, first half), request bodies
** to exact text (encoding, second half).
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
** (Why not cjson's encode: see the encoding half.)
** Adds to the module: core.decode, core.encode, core.null, core.empty_array, core.array_mt.
** Called by: core.c, request.c, wire.c.
** Calls: error.c, lib/buf.c, lib/text.c.
*/
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ibkr.h"
#include "lib/buf.h"
#include "lib/text.h"

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

/* protected part of json_decode_and: (text, len, tail, tlen) -> value [, tail] */
static int decode_p(lua_State *L) {
  parser ps;
  size_t len, tlen;
  const char *tail = lua_touserdata(L, 3);
  ps.L = L;
  ps.start = ps.p = lua_touserdata(L, 1);
  len = (size_t)lua_tointeger(L, 2);
  tlen = (size_t)lua_tointeger(L, 4);
  ps.end = ps.p + len;
  lua_settop(L, 0);
  skip_ws(&ps);
  value(&ps, 0);
  skip_ws(&ps);
  if (ps.p != ps.end) fail(&ps, "trailing characters");
  if (tail == NULL) return 1;
  lua_pushlstring(L, tail, tlen);
  return 2;
}

/*
** Decode s[0..len). Pushes the value and returns 1, or pushes the message
** and returns 0. Runs under lua_pcall, so neither bad JSON nor a memory
** error escapes as a raise. The text is read in place (it is the session's
** C buffer, or a Lua string the caller keeps on its stack).
*/
int json_decode(lua_State *L, const char *s, size_t len) {
  return json_decode_and(L, s, len, NULL, 0);
}

/* json_decode, then tail[0..tlen) pushed as a string above the value, under
** the same protection (the header block of an answer: request.c). Pushes
** value and tail and returns 1, or pushes the message and returns 0. */
int json_decode_and(lua_State *L, const char *s, size_t len, const char *tail, size_t tlen) {
  lua_pushcfunction(L, decode_p);
  lua_pushlightuserdata(L, (void *)s);
  lua_pushinteger(L, (lua_Integer)len);
  lua_pushlightuserdata(L, (void *)tail);
  lua_pushinteger(L, (lua_Integer)tlen);
  return lua_pcall(L, 4, tail ? 2 : 1, 0) == LUA_OK;
}

/* --------------------------------------------------------------- encoding */

/*
** Lua value -> JSON text, by the request-body rules (docs/json.md). Not
** lua-cjson's encode: Debian's 2.1.0 writes %.14g (0.1 + 0.2 went out as
** 0.3, integers above 2^53 lost digits) and hash order.
**   - integers as integers; floats as the shortest %.Ng text that strtod
**     reads back bit-identical (%.15g is the shortest that can be for a
**     normal double; a subnormal tries from %.1g), integral floats below
**     2^63 as their exact integer digits; NaN and infinities are errors;
**   - ibkr.null is null, ibkr.empty_array is [];
**   - a table with keys 1..n only is an array, one with string keys only an
**     object (members sorted by key bytes, so a body is reproducible), an
**     empty one {} -- or [] with the metatable ibkr.array_mt, which makes a
**     table always an array; any other table is an error;
**   - strings escaped per RFC 8259; bytes that are not UTF-8 are an error;
**   - cycles and nesting deeper than IBKR_MAX_DEPTH are errors.
** Tables are read raw (lua_next, lua_rawget, lua_rawgeti): no __index,
** __pairs or __len runs, and the walk creates no Lua object (so no GC
** step), so no user code (finaliser included) runs during it and nothing it
** holds can be freed. Pushing the finished text may run a finaliser: a
** caller holding a session re-checks it after json_encode. The text grows
** in malloc'd memory owned by json_encode, which the protected walk never
** frees: json_encode does, whatever happened.
*/

static char empty_array_tag;              /* its address is ibkr.empty_array */
#define EMPTY_ARRAY ((void *)&empty_array_tag)
#define ARRAY_MT "ibkr.array_mt"          /* registry name of ibkr.array_mt */
#define TWO63 9223372036854775808.0

typedef struct keyref {
  const char *s;
  size_t n;
  int idx;                                /* stack slot anchoring the key */
} keyref;

typedef struct encoder {
  lua_State *L;
  ibuf out;
  keyref *keys;                           /* sort scratch shared by all levels (by index: it moves) */
  size_t nkeys, capkeys;
  int depth;                              /* containers open */
  const void *open[IBKR_MAX_DEPTH];       /* those tables, outermost first: cycles */
  int keyidx[IBKR_MAX_DEPTH];             /* member of each being encoded: key's stack slot... */
  lua_Integer at[IBKR_MAX_DEPTH];         /* ...or array index (keyidx 0) -- for messages */
} encoder;

static void enc_value(encoder *e, int idx);

/*
** Raise "cannot encode as JSON: <what> at $.key[i]...", one printable
** line. Only here does the encoder create Lua objects: the walk is over.
*/
__attribute__((noreturn)) static void enc_fail(encoder *e, const char *what) {
  lua_State *L = e->L;
  size_t len;
  const char *m;
  luaL_checkstack(L, 4, NULL);
  lua_pushfstring(L, "cannot encode as JSON: %s at $", what);
  for (int d = 0; d < e->depth; d++) {
    if (e->keyidx[d] == 0) {
      lua_pushfstring(L, "[%I]", (LUAI_UACINT)e->at[d]);
    } else {
      m = lua_tolstring(L, e->keyidx[d], &len);
      lua_pushliteral(L, ".");
      error_push_printable(L, m, len, 64);
      lua_concat(L, 2);
    }
    lua_concat(L, 2);
  }
  m = lua_tolstring(L, -1, &len);
  error_push_printable(L, m, len, IBKR_MSG_MAX);
  lua_error(L);
  abort();   /* not reached */
}

/* room for n more bytes at the end of the text */
static inline char *enc_room(encoder *e, size_t n) {
  if (e->out.n + n >= e->out.cap && !buf_reserve(&e->out, e->out.n + n + 1))
    luaL_error(e->L, "not enough memory");
  return e->out.p + e->out.n;
}

static inline void enc_add(encoder *e, const char *s, size_t n) {
  memcpy(enc_room(e, n), s, n);
  e->out.n += n;
}

/*
** A finite double as the shortest text strtod reads back bit-identical, into
** out (JSON_NUMTEXT bytes); returns its length. snprintf and strtod agree on
** the locale's decimal point; JSON's is '.', so whatever the locale put
** there becomes one '.'.
*/
static size_t enc_float_text(double x, char *out) {
  char buf[64];
  int n = 0;
  size_t o = 0;
  if (x == floor(x) && fabs(x) < TWO63) n = snprintf(buf, sizeof buf, "%.0f", x);
  else                    /* a subnormal has fewer digits: %.15g may not be its shortest */
    for (int prec = fabs(x) < DBL_MIN ? 1 : 15; prec <= 17; prec++) {
      n = snprintf(buf, sizeof buf, "%.*g", prec, x);
      if (strtod(buf, NULL) == x) break;
    }
  for (int i = 0; i < n && o < JSON_NUMTEXT - 1; i++) {
    char c = buf[i];
    if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e') out[o++] = c;
    else if (o == 0 || out[o - 1] != '.') out[o++] = '.';
  }
  out[o] = '\0';
  return o;
}

/*
** The number at idx as exact text into out (JSON_NUMTEXT bytes): an
** integer's digits, a float's shortest round-trip text (docs/json.md).
** Returns the length, or 0 for NaN and the infinities, which have none.
** The one number rule of request bodies and query strings.
*/
size_t json_number_text(lua_State *L, int idx, char *out) {
  if (lua_isinteger(L, idx)) {                   /* digits backwards, without snprintf */
    char buf[24], *p = buf + sizeof buf;
    lua_Integer i = lua_tointeger(L, idx);
    lua_Unsigned u = i < 0 ? 0u - (lua_Unsigned)i : (lua_Unsigned)i;
    size_t n;
    do *--p = (char)('0' + u % 10); while ((u /= 10) != 0);
    if (i < 0) *--p = '-';
    n = (size_t)(buf + sizeof buf - p);
    memcpy(out, p, n);
    out[n] = '\0';
    return n;
  } else {
    double x = (double)lua_tonumber(L, idx);
    if (isnan(x) || isinf(x)) return 0;
    return enc_float_text(x, out);
  }
}

static void enc_number(encoder *e, int idx) {
  char buf[JSON_NUMTEXT];
  size_t n = json_number_text(e->L, idx, buf);
  if (n == 0) {
    double x = (double)lua_tonumber(e->L, idx);
    enc_fail(e, isnan(x) ? "NaN (JSON has no NaN)" : x > 0 ? "inf (JSON has no infinity)"
                                                      : "-inf (JSON has no infinity)");
  }
  enc_add(e, buf, n);
}

/* bytes a string copies as they are: ASCII but '"', '\\' and C0 controls */
#define ONES16 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
static const unsigned char enc_plain[256] = {
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,                  /* 0x22 '"' */
  ONES16, ONES16,
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,                  /* 0x5C '\\' */
  ONES16, ONES16                                                    /* 0x80-0xFF: 0, UTF-8 checked */
};

/* a string, escaped per RFC 8259: '"', '\\' and C0 controls; the rest as it
** is once checked to be UTF-8 */
static void enc_string(encoder *e, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t i = 0;
  enc_add(e, "\"", 1);
  while (i < len) {
    size_t run = i, k;
    unsigned cp;
    while (i < len && enc_plain[(unsigned char)s[i]]) i++;
    if (i > run) enc_add(e, s + run, i - run);
    if (i == len) break;
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x80) {
      if ((k = text_utf8_len(s + i, len - i, &cp)) == 0) enc_fail(e, "a string that is not UTF-8");
      enc_add(e, s + i, k);
      i += k;
      continue;
    }
    {
      char esc[6] = {'\\', 0, '0', '0', hex[c >> 4], hex[c & 15]};
      switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default: esc[1] = 'u'; break;
      }
      enc_add(e, esc, esc[1] == 'u' ? 6 : 2);
    }
    i++;
  }
  enc_add(e, "\"", 1);
}

static int enc_keycmp(const void *a, const void *b) {
  const keyref *x = a, *y = b;
  int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
  return c != 0 ? c : (x->n > y->n) - (x->n < y->n);
}

/* sort keys by bytes: insertion sort for the few keys of a usual body, qsort beyond */
static void enc_sort_keys(keyref *k, size_t n) {
  if (n > 16) {
    qsort(k, n, sizeof *k, enc_keycmp);
    return;
  }
  for (size_t i = 1; i < n; i++) {
    keyref x = k[i];
    size_t j = i;
    while (j > 0 && enc_keycmp(&k[j - 1], &x) > 0) {
      k[j] = k[j - 1];
      j--;
    }
    k[j] = x;
  }
}

/* the members of the object at idx, whose n string keys are on the stack
** above base, in key order */
static void enc_object(encoder *e, int idx, int base, size_t n) {
  lua_State *L = e->L;
  int d = e->depth - 1;
  size_t kb = e->nkeys;
  if (kb + n > e->capkeys) {
    size_t cap = e->capkeys ? e->capkeys * 2 : 32;
    keyref *k;
    while (cap < kb + n) cap *= 2;
    if ((k = realloc(e->keys, cap * sizeof *k)) == NULL) luaL_error(L, "not enough memory");
    e->keys = k;
    e->capkeys = cap;
  }
  for (size_t i = 0; i < n; i++) {
    keyref *k = &e->keys[kb + i];
    k->idx = base + 1 + (int)i;
    k->s = lua_tolstring(L, k->idx, &k->n);       /* strings: no conversion, no allocation */
  }
  e->nkeys = kb + n;
  enc_sort_keys(e->keys + kb, n);
  enc_add(e, "{", 1);
  for (size_t i = 0; i < n; i++) {
    keyref k = e->keys[kb + i];                   /* a copy: the array may move below */
    if (i > 0) enc_add(e, ",", 1);
    enc_string(e, k.s, k.n);
    enc_add(e, ":", 1);
    e->keyidx[d] = k.idx;
    lua_pushvalue(L, k.idx);
    lua_rawget(L, idx);
    enc_value(e, lua_gettop(L));
    lua_pop(L, 1);
  }
  enc_add(e, "}", 1);
  e->nkeys = kb;
  lua_settop(L, base);
}

static void enc_array(encoder *e, int idx, lua_Integer n) {
  lua_State *L = e->L;
  int d = e->depth - 1;
  enc_add(e, "[", 1);
  e->keyidx[d] = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    if (i > 1) enc_add(e, ",", 1);
    e->at[d] = i;
    lua_rawgeti(L, idx, i);
    enc_value(e, lua_gettop(L));
    lua_pop(L, 1);
  }
  enc_add(e, "]", 1);
}

static int enc_has_array_mt(lua_State *L, int idx) {
  int r;
  if (!lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, ARRAY_MT);
  r = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return r;
}

/* raise for the key at the top, which is neither a string nor 1..n */
__attribute__((noreturn)) static void enc_bad_key(encoder *e) {
  lua_State *L = e->L;
  char what[96];
  if (lua_isinteger(L, -1))
    snprintf(what, sizeof what, "a table with the key " LUA_INTEGER_FMT " (arrays start at 1)",
             (LUAI_UACINT)lua_tointeger(L, -1));
  else if (lua_type(L, -1) == LUA_TNUMBER) {
    char num[JSON_NUMTEXT];
    if (json_number_text(L, -1, num) == 0) strcpy(num, lua_tonumber(L, -1) > 0 ? "inf" : "-inf");
    snprintf(what, sizeof what, "a table with the key %s (not a string nor 1..n)", num);
  } else
    snprintf(what, sizeof what, "a table with a %s key (not a string nor 1..n)", luaL_typename(L, -1));
  enc_fail(e, what);
}

/*
** A table: walk its keys once (raw) to tell an array (1..n) from an object
** (strings: they stay on the stack for sorting), refuse anything else,
** then write it.
*/
static void enc_table(encoder *e, int idx) {
  lua_State *L = e->L;
  const void *self = lua_topointer(L, idx);
  lua_Integer nint = 0, max = 0;
  size_t nstr = 0;
  int forced, base = lua_gettop(L);
  for (int d = 0; d < e->depth; d++)
    if (e->open[d] == self) enc_fail(e, "a table that contains itself (a cycle)");
  if (e->depth >= IBKR_MAX_DEPTH) enc_fail(e, "tables nested deeper than 256");
  luaL_checkstack(L, 8, "JSON nesting");          /* this level's own slots */
  forced = enc_has_array_mt(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (!lua_checkstack(L, 4)) {                  /* keys wait on the stack: LUAI_MAXSTACK */
      lua_settop(L, base);
      enc_fail(e, "an object with more keys than the Lua stack holds (about a million)");
    }
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      if (nint > 0 || forced) break;              /* mixed: refused below */
      nstr++;
      lua_pushvalue(L, -1);                       /* ..., keys, k, k: the lower one stays */
    } else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0) {
      if (nstr > 0) break;
      nint++;
      if (lua_tointeger(L, -1) > max) max = lua_tointeger(L, -1);
    } else
      enc_bad_key(e);
  }
  if (lua_gettop(L) > base + (int)nstr)           /* the loop broke off at a key */
    enc_fail(e, forced ? "an ibkr.array_mt table with string keys"
                       : "a table with both string keys and array indices");
  if (nint > 0 && max != nint) enc_fail(e, "a sparse array (nil holes: use ibkr.null)");
  e->open[e->depth++] = self;
  if (nstr > 0) enc_object(e, idx, base, nstr);
  else if (nint > 0 || forced) enc_array(e, idx, nint);
  else enc_add(e, "{}", 2);
  e->depth--;
}

static void enc_value(encoder *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: enc_add(e, "null", 4); break;
    case LUA_TBOOLEAN: lua_toboolean(L, idx) ? enc_add(e, "true", 4) : enc_add(e, "false", 5); break;
    case LUA_TNUMBER: enc_number(e, idx); break;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      enc_string(e, s, n);
      break;
    }
    case LUA_TTABLE: enc_table(e, idx); break;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) { enc_add(e, "null", 4); break; }
      if (lua_touserdata(L, idx) == EMPTY_ARRAY) { enc_add(e, "[]", 2); break; }
      /* fall through */
    default: {
      char what[64];
      snprintf(what, sizeof what, "a %s", lua_typename(L, lua_type(L, idx)));
      enc_fail(e, what);
    }
  }
}

/* protected part of json_encode: (value, encoder) -> text */
static int enc_protected(lua_State *L) {
  encoder *e = lua_touserdata(L, 2);
  e->L = L;
  enc_value(e, 1);
  lua_pushlstring(L, e->out.p ? e->out.p : "", e->out.n);
  return 1;
}

/*
** Encode the value at validx as JSON text (the request-body rules above) and
** push the text. Raises a one-line error message for a value JSON cannot
** carry exactly, after freeing what the encoding held.
*/
int json_encode(lua_State *L, int validx) {
  encoder e;
  int st;
  e.out.p = NULL;
  e.out.n = e.out.cap = 0;
  e.keys = NULL;
  e.nkeys = e.capkeys = 0;
  e.depth = 0;
  validx = lua_absindex(L, validx);
  lua_pushcfunction(L, enc_protected);
  lua_pushvalue(L, validx);
  lua_pushlightuserdata(L, &e);
  st = lua_pcall(L, 2, 1, 0);
  buf_free(&e.out);
  free(e.keys);
  if (st != LUA_OK) lua_error(L);
  return 1;
}

/* core.decode(text) -> value, or nil, err (kind "json") */
static int core_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (json_decode(L, s, n)) return 1;
  {
    const char *msg = lua_tostring(L, -1);
    return error_fail(L, KIND_JSON, msg ? msg : "invalid JSON", 0, 0);
  }
}

/* core.encode(value) -> JSON text; raises on a value JSON cannot carry */
static int core_encode(lua_State *L) {
  luaL_checkany(L, 1);
  return json_encode(L, 1);
}

static const luaL_Reg json_funcs[] = {
  {"decode", core_decode},
  {"encode", core_encode},
  {NULL, NULL}
};

/*
** Add the JSON entries to the module table at the top: decode, encode,
** null (the array-null sentinel: a light userdata NULL, lua-cjson's),
** empty_array (a light userdata, like null) and array_mt (a metatable known
** by identity, kept in the registry so that reloading the module keeps it).
*/
int json_open(lua_State *L) {
  luaL_setfuncs(L, json_funcs, 0);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_pushlightuserdata(L, EMPTY_ARRAY);
  lua_setfield(L, -2, "empty_array");
  luaL_newmetatable(L, ARRAY_MT);
  lua_setfield(L, -2, "array_mt");
  return 0;
}
