/*
** error.c -- the error objects of ibkr: plain tables with the "ibkr.error"
** metatable, so that fields are ordinary Lua values and tostring() gives one
** readable line.
**
** Every message is one bounded, printable line (issue 9, kind 5): texts that
** come from outside -- the gateway's "error" field, an HTML page's title, a
** redirect target, libcurl's error buffer, a Lua caller's message -- pass
** through ibkr_push_printable, which escapes what could end the line or
** drive a terminal and cuts what is too long. tostring() applies it again to
** each field it prints, so an error a user modified still prints one line.
*/
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ibkr.h"

#define ELLIPSIS "\xE2\x80\xA6"        /* U+2026, appended where a text was cut */
#define DETAIL_MAX 200                 /* bytes of a page title or plain-text body in a message */

void ibkr_seti(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

void ibkr_sets(lua_State *L, const char *k, const char *v) {
  if (v == NULL) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* ------------------------------------------------------------ printable text */

/*
** Length (1..4) of the well-formed UTF-8 sequence at s (RFC 3629: no
** overlong forms, no surrogates, nothing above U+10FFFF), or 0 if the bytes
** there are not one. *cp receives the code point.
*/
size_t ibkr_utf8_len(const char *s, size_t avail, unsigned *cp) {
  const unsigned char *p = (const unsigned char *)s;
  unsigned c = p[0], lo = 0x80, hi = 0xBF;
  size_t n;
  if (c < 0x80) { *cp = c; return 1; }
  if (c >= 0xC2 && c <= 0xDF) { n = 2; c &= 0x1F; }
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; c &= 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; c &= 0x07;
  } else return 0;
  if (avail < n || p[1] < lo || p[1] > hi) return 0;
  c = (c << 6) | (p[1] & 0x3F);
  for (size_t i = 2; i < n; i++) {
    if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    c = (c << 6) | (p[i] & 0x3F);
  }
  *cp = c;
  return n;
}

/* code points a terminal must not get raw: C1 controls (NEL, CSI...), line
** and paragraph separators, bidirectional overrides and isolates, BOM */
static int term_unsafe(unsigned cp) {
  return (cp >= 0x80 && cp <= 0x9F) || cp == 0x061C || cp == 0x200E || cp == 0x200F ||
         (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0xFEFF;
}

/*
** One character of a text that is not plain ASCII, at s: writes what a
** printable line shows for it into out (at most 15 bytes) and returns that
** length; *step is how many input bytes it stood for.
*/
static size_t printable_char(const char *s, size_t avail, char *out, size_t *step) {
  unsigned char c = (unsigned char)s[0];
  unsigned cp;
  *step = 1;
  if (c == '\r' || c == '\n' || c == '\t')
    return (size_t)snprintf(out, 16, "\\%c", c == '\r' ? 'r' : c == '\n' ? 'n' : 't');
  if (c < 0x80 || (*step = ibkr_utf8_len(s, avail, &cp)) == 0) {
    *step = 1;                                    /* C0, DEL, or a byte that is not UTF-8 */
    return (size_t)snprintf(out, 16, "\\x%02X", c);
  }
  if (term_unsafe(cp)) return (size_t)snprintf(out, 16, "\\u{%04X}", cp);
  memcpy(out, s, *step);
  return *step;
}

/*
** The text s[0..len) made one printable line of at most max bytes (plus
** the 3-byte ellipsis when cut): CR, LF and TAB become \r \n \t, other C0
** controls, DEL and bytes that are not UTF-8 become \xNN, unsafe code points
** \u{XXXX}. A backslash stays as it is. Never cuts inside an escape or a
** character. Pushes the result and returns it.
*/
const char *ibkr_push_printable(lua_State *L, const char *s, size_t len, size_t max) {
  luaL_Buffer b;
  size_t i = 0, out = 0;
  luaL_buffinit(L, &b);
  while (i < len) {
    char esc[16];
    const char *piece = s + i;
    size_t pn = 0, step = 0;
    while (i + step < len && (unsigned char)s[i + step] >= 0x20 && (unsigned char)s[i + step] < 0x7F)
      step++;                                     /* a run of plain ASCII, copied as it is */
    if (step > 0) pn = step = step < max - out ? step : max - out;
    else {
      pn = printable_char(s + i, len - i, esc, &step);
      piece = esc;
      if (out + pn > max) pn = 0;
    }
    if (pn == 0) {                                /* no room left */
      luaL_addstring(&b, ELLIPSIS);
      break;
    }
    luaL_addlstring(&b, piece, pn);
    out += pn;
    i += step;
  }
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
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
  ibkr_push_printable(L, s, n, max);
  lua_remove(L, -2);
  return 1;
}

/*
** s[0..n) without the userinfo of the URLs in it ("https://u:p@host/"
** becomes "https://host/"), written NUL-terminated to out; returns its
** length; out has room for n + 1 bytes: libcurl resolves a relative Location
** against the request URL, base_url credentials included, and a caller or
** libcurl may quote a URL in a message. After each "://" everything up to
** the LAST '@' before the next '/', whitespace, quote, '<', '>', control
** character or end goes (in a quoted URL, as libcurl quotes one, only the
** closing quote, not whitespace, ends it): a password may hold '#', '?',
** ':' -- "Unsupported proxy syntax in 'http://bob:pr0xy#secret@host'" --
** so those do not end the userinfo here. The one copy of this rule (wire.c uses it for base_url).
*/
/* the end of the authority of a URL whose "//" ends at auth: the next '/',
** '<', '>', control byte or end, and a quote or whitespace -- unless the URL
** is quoted (libcurl writes 'http://...'): then only its closing quote */
static const char *authority_end(const char *s, const char *auth, const char *end) {
  const char *b = auth - 3;
  char quote = 0;
  while (b > s && (isalnum((unsigned char)b[-1]) || b[-1] == '+' || b[-1] == '-' || b[-1] == '.')) b--;
  if (b > s && (b[-1] == '\'' || b[-1] == '"')) quote = b[-1];
  for (; auth < end; auth++) {
    unsigned char c = (unsigned char)*auth;
    if (c == '/' || c < ' ' || c == 0x7f || c == '<' || c == '>') break;
    if (quote ? c == (unsigned char)quote : (c == ' ' || c == '"' || c == '\'')) break;
  }
  return auth;
}

size_t ibkr_strip_userinfo(const char *s, size_t n, char *out) {
  char *o = out;
  const char *p = s, *end = s + n;
  for (const char *q = s; q + 3 <= end; q++) {
    const char *auth, *at = NULL, *stop;
    if (q[0] != ':' || q[1] != '/' || q[2] != '/') continue;
    auth = q + 3;
    stop = authority_end(s, auth, end);
    for (const char *a = auth; a < stop; a++)
      if (*a == '@') at = a;
    if (at == NULL) continue;
    memcpy(o, p, (size_t)(auth - p));
    o += auth - p;
    p = at + 1;
    q = at;
  }
  memcpy(o, p, (size_t)(end - p));
  o += end - p;
  *o = '\0';
  return (size_t)(o - out);
}

static void push_without_userinfo(lua_State *L, const char *s, size_t n) {
  char *t = lua_newuserdatauv(L, n + 1, 0);      /* collected, whatever raises */
  lua_pushlstring(L, t, ibkr_strip_userinfo(s, n, t));
  lua_remove(L, -2);
}

/* push a message made from s[0..n): no URL userinfo, printable, bounded */
static void push_message(lua_State *L, const char *s, size_t n) {
  push_without_userinfo(L, s, n);
  s = lua_tolstring(L, -1, &n);
  ibkr_push_printable(L, s, n, IBKR_MSG_MAX);
  lua_remove(L, -2);
}

/* make the message field of the error table at idx a message (core.error) */
void ibkr_error_sanitize(lua_State *L, int idx) {
  size_t n;
  const char *s;
  idx = lua_absindex(L, idx);
  lua_pushliteral(L, "message");
  lua_pushliteral(L, "message");
  if (lua_rawget(L, idx) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
    s = lua_tolstring(L, -1, &n);                 /* converts the copy, not the field */
    push_message(L, s, n);
    lua_remove(L, -2);
    lua_rawset(L, idx);
  } else
    lua_pop(L, 2);
}

/* ----------------------------------------------------------- error objects */

/*
** Push a new error table {kind=, message=, method=, path=}; method and path
** are copied from the given stack slots when those hold strings (0 = none).
** The message is made printable and bounded, without URL userinfo.
*/
int ibkr_push_error(lua_State *L, const char *kind, const char *message,
                    int methodidx, int pathidx) {
  if (methodidx < 0) methodidx = lua_absindex(L, methodidx);
  if (pathidx < 0) pathidx = lua_absindex(L, pathidx);
  lua_createtable(L, 0, 8);
  ibkr_sets(L, "kind", kind);
  if (message) {
    push_message(L, message, strlen(message));
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
int ibkr_fail(lua_State *L, const char *kind, const char *message, int methodidx, int pathidx) {
  lua_pushnil(L);
  ibkr_push_error(L, kind, message, methodidx, pathidx);
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

/* ------------------------------------------------------- describing answers */

static int html_space(int c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* case-insensitive search for the ASCII word w in s[0..n); NULL if absent */
static const char *html_find(const char *s, size_t n, const char *w) {
  size_t wl = strlen(w);
  for (size_t i = 0; i + wl <= n; i++) {
    size_t j = 0;
    while (j < wl && (s[i + j] | 0x20) == w[j]) j++;
    if (j == wl) return s + i;
  }
  return NULL;
}

/* the character an HTML entity at s (on the '&') stands for, as UTF-8 in
** out; returns the entity's length, or 0 when it is not one we decode */
static size_t html_entity(const char *s, size_t n, char *out, size_t *outn) {
  static const char *const names[] = {"&amp;", "&", "&lt;", "<", "&gt;", ">", "&quot;", "\"",
                                      "&apos;", "'", "&nbsp;", " ", NULL};
  const char *semi = memchr(s, ';', n < 12 ? n : 12);
  unsigned long cp;
  char *end;
  if (semi == NULL) return 0;
  for (int i = 0; names[i]; i += 2)
    if ((size_t)(semi - s + 1) == strlen(names[i]) && memcmp(s, names[i], strlen(names[i])) == 0) {
      *outn = strlen(names[i + 1]);
      memcpy(out, names[i + 1], *outn);
      return strlen(names[i]);
    }
  if (n < 4 || s[1] != '#') return 0;
  cp = (s[2] | 0x20) == 'x' ? strtoul(s + 3, &end, 16) : strtoul(s + 2, &end, 10);
  if (end != semi || end == s + 2 || cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  if (cp < 0x80) { out[0] = (char)cp; *outn = 1; }
  else if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); *outn = 2; }
  else if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F)); *outn = 3;
  } else {
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); *outn = 4;
  }
  return (size_t)(semi - s + 1);
}

/*
** The text of s[0..n) as one line: for HTML, tags dropped and the usual
** entities decoded; runs of whitespace made one space, ends trimmed; then
** printable and cut at DETAIL_MAX. Pushes it; returns 0 (pushing nothing)
** if nothing is left.
*/
static int push_oneline(lua_State *L, const char *s, size_t n, int html) {
  luaL_Buffer b;
  size_t len;
  int space = 0, any = 0;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < n; i++) {
    char ch[4];
    size_t chn = 1, skip;
    if (html && s[i] == '<') {                    /* a tag inside the element: drop it */
      const char *gt = memchr(s + i, '>', n - i);
      if (gt == NULL) break;
      i = (size_t)(gt - s);
      space = any;
      continue;
    }
    if (html_space((unsigned char)s[i])) { space = any; continue; }
    ch[0] = s[i];
    if (html && s[i] == '&' && (skip = html_entity(s + i, n - i, ch, &chn)) > 0) i += skip - 1;
    if (chn == 1 && ch[0] == ' ') { space = any; continue; }   /* &nbsp; */
    if (space) luaL_addchar(&b, ' ');
    luaL_addlstring(&b, ch, chn);
    space = 0;
    any = 1;
  }
  luaL_pushresult(&b);
  if (!any) {
    lua_pop(L, 1);
    return 0;
  }
  s = lua_tolstring(L, -1, &len);
  ibkr_push_printable(L, s, len, DETAIL_MAX);
  lua_remove(L, -2);
  return 1;
}

/* the text of the first <tag ...>...</tag> element of an HTML page; pushes it or returns 0 */
static int push_html_element(lua_State *L, const char *s, size_t n, const char *open, const char *close) {
  const char *p = html_find(s, n, open), *gt, *end;
  if (p == NULL) return 0;
  gt = memchr(p, '>', n - (size_t)(p - s));
  if (gt == NULL || !(html_space((unsigned char)p[strlen(open)]) || p + strlen(open) == gt)) return 0;
  gt++;
  end = html_find(gt, n - (size_t)(gt - s), close);
  return push_oneline(L, gt, end ? (size_t)(end - gt) : n - (size_t)(gt - s), 1);
}

/* a body that reads as a short line of text (UTF-8, no controls but whitespace, no markup) */
static int is_short_text(const char *s, size_t n) {
  unsigned cp;
  if (n > 2 * DETAIL_MAX) return 0;
  for (size_t i = 0, k; i < n; i += k) {
    if ((k = ibkr_utf8_len(s + i, n - i, &cp)) == 0) return 0;
    if ((cp < 0x20 && !html_space((int)cp)) || cp == 0x7F || cp == '<' || cp == '{' || cp == '[') return 0;
  }
  return 1;
}

/* a JSON text that is not blank, printable; pushes it or returns 0 */
static int push_json_text(lua_State *L, const char *s, size_t n) {
  size_t i = 0;
  while (i < n && html_space((unsigned char)s[i])) i++;
  if (i == n) return 0;
  ibkr_push_printable(L, s, n, IBKR_MSG_MAX - 32);
  return 1;
}

/*
** Push the gateway's own words from the decoded JSON body (data): its
** "error", then "message", then "fail" text (the gateway's fields), then
** "detail", then "title" (RFC 7807 problem details, api.ibkr.com's 401), or
** the body itself when it is a JSON string. Returns 0 (pushing nothing)
** when there are none.
*/
static int push_json_words(lua_State *L, int t) {
  static const char *const keys[] = {"error", "message", "fail", "detail", "title", NULL};
  size_t n;
  const char *s;
  lua_pushliteral(L, "data");
  if (lua_rawget(L, t) == LUA_TTABLE) {
    for (int i = 0; keys[i]; i++) {
      lua_pushstring(L, keys[i]);
      if (lua_rawget(L, -2) == LUA_TSTRING && (s = lua_tolstring(L, -1, &n), push_json_text(L, s, n))) {
        lua_replace(L, -3);                       /* words, text */
        lua_pop(L, 1);
        return 1;
      }
      lua_pop(L, 1);
    }
  } else if (lua_type(L, -1) == LUA_TSTRING && (s = lua_tolstring(L, -1, &n), push_json_text(L, s, n))) {
    lua_remove(L, -2);
    return 1;
  }
  lua_pop(L, 1);
  return 0;
}

/*
** Push the words of a body that is not JSON: the title (else the first h1)
** of an HTML page, or a short plain-text body. Returns 0 when there are none.
*/
static int push_page_words(lua_State *L, int t) {
  size_t n;
  const char *s;
  int dataless;
  lua_pushliteral(L, "data");
  dataless = lua_rawget(L, t) == LUA_TNIL;
  lua_pop(L, 1);
  lua_pushliteral(L, "body");
  if (lua_rawget(L, t) == LUA_TSTRING) {
    s = lua_tolstring(L, -1, &n);
    if (push_html_element(L, s, n, "<title", "</title") || push_html_element(L, s, n, "<h1", "</h1") ||
        (dataless && is_short_text(s, n) && push_oneline(L, s, n, 0))) {
      lua_remove(L, -2);
      return 1;
    }
  }
  lua_pop(L, 1);
  return 0;
}

/*
** Set the message of the error table at idx (a non-2xx answer) from its
** fields: "HTTP <status>: <words>" with the JSON body's error, message,
** fail, detail or title text; else "HTTP <status> redirect to <location>
** (not followed)", the location field losing any userinfo and made one
** printable line of at most IBKR_MSG_MAX bytes (plus an ellipsis when cut); else
** "HTTP <status>: <title>" for an HTML page (or a short plain-text body);
** else "HTTP <status>". Reads fields raw; the message is one printable line.
*/
void ibkr_error_describe(lua_State *L, int idx) {
  int top = lua_gettop(L), isint;
  lua_Integer status;
  idx = lua_absindex(L, idx);
  lua_pushliteral(L, "status");
  lua_rawget(L, idx);
  status = lua_tointegerx(L, -1, &isint);
  if (isint) lua_pushfstring(L, "HTTP %I", (LUAI_UACINT)status);
  else lua_pushliteral(L, "HTTP");
  lua_pushliteral(L, "location");
  if (lua_rawget(L, idx) == LUA_TSTRING) {        /* the field too: no userinfo, printable, bounded */
    size_t n;
    const char *loc = lua_tolstring(L, -1, &n);
    push_message(L, loc, n);
    lua_remove(L, -2);
    lua_pushliteral(L, "location");
    lua_pushvalue(L, -2);
    lua_rawset(L, idx);
  }
  if (push_json_words(L, idx)) {
    lua_pushliteral(L, ": ");
    lua_insert(L, -2);
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *loc = lua_tolstring(L, -1, &n);
    lua_pushliteral(L, " redirect to ");
    ibkr_push_printable(L, loc, n, IBKR_MSG_MAX - 64);
    lua_pushliteral(L, " (not followed)");
  } else if (push_page_words(L, idx)) {
    lua_pushliteral(L, ": ");
    lua_insert(L, -2);
  }
  lua_remove(L, top + 3);                         /* the location */
  lua_concat(L, lua_gettop(L) - top - 1);
  lua_pushliteral(L, "message");
  lua_insert(L, -2);
  lua_rawset(L, idx);
  lua_settop(L, top);
}

void ibkr_error_register(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}

/* core.printable(text [, max]) -> text as one printable line of at most max
** (default IBKR_MSG_MAX) bytes and without URL userinfo, as messages are, for
** callers that print gateway texts or URLs */
static int error_printable(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer max = luaL_optinteger(L, 2, IBKR_MSG_MAX);
  luaL_argcheck(L, max >= 1, 2, "must be positive");
  push_without_userinfo(L, s, n);
  s = lua_tolstring(L, -1, &n);
  ibkr_push_printable(L, s, n, (size_t)max);
  return 1;
}

/* add error.c's functions to the module table at the top */
void ibkr_error_open(lua_State *L) {
  lua_pushcfunction(L, error_printable);
  lua_setfield(L, -2, "printable");
}
