/*
** message.c -- the message of an HTTP error, built from the answer: the
** gateway's own words from its JSON body ("error", "message", "fail", then
** RFC 7807's "detail" and "title"), a redirect's target, an HTML page's
** title or first heading, or a short plain-text body (docs/json.md's
** table). It stays in C, not in the Lua layer: ibkr.core users without
** that layer get complete error objects too, and it reads what the core
** gathered (the body, the decoded data, the Location) before any Lua
** policy sees the error. It is text extraction, not policy: the states a
** status maps to are the Lua layer's.
** Called by: request.c, websocket.c.
** Calls: error.c, lib/text.c.
*/
#include <stdlib.h>
#include <string.h>

#include "ibkr.h"
#include "lib/text.h"

#define DETAIL_MAX 200                 /* bytes of a page title or plain-text body in a message */

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
  error_push_printable(L, s, len, DETAIL_MAX);
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
    if ((k = text_utf8_len(s + i, n - i, &cp)) == 0) return 0;
    if ((cp < 0x20 && !html_space((int)cp)) || cp == 0x7F || cp == '<' || cp == '{' || cp == '[') return 0;
  }
  return 1;
}

/* a JSON text that is not blank, printable; pushes it or returns 0 */
static int push_json_text(lua_State *L, const char *s, size_t n) {
  size_t i = 0;
  while (i < n && html_space((unsigned char)s[i])) i++;
  if (i == n) return 0;
  error_push_printable(L, s, n, IBKR_MSG_MAX - 32);
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
void message_describe(lua_State *L, int idx) {
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
    error_push_message(L, loc, n);
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
    error_push_printable(L, loc, n, IBKR_MSG_MAX - 64);
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
