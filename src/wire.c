/*
** wire.c -- what goes on the wire, one copy of each rule: the base URL and
** which hosts are loopback, the method, the path, the query string, header
** names and values, the header list of each request shape. Everything a
** call reads from the caller's values is read here, before the session is
** touched (user code can run inside any of these reads: metamethods, and
** finalisers on allocation).
** Adds to the module: core.check_path, core.check_headers, core.parse_headers
** (a response's header block as a table: the Lua layer's meta.headers).
** Called by: core.c, session.c.
** Calls: json.c, lib/text.c, lib/buf.c.
*/
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ibkr.h"
#include "lib/buf.h"
#include "lib/text.h"

/* ------------------------------------------------------------ base URL */

/*
** Loopback for certain, as curl's URL parser gives the host (IPv6 in
** brackets, "127.1" already made 127.0.0.1): an IPv4 address in
** 127.0.0.0/8, the IPv6 ::1 in any spelling, an IPv4-mapped IPv6 address
** ::ffff:127.x.y.z, each also with one trailing dot on a name or IPv4
** address -- read with inet_pton, not compared as text. Returns 1 for
** those, 2 for "localhost" (any case, with or without the trailing dot),
** which the session pins to 127.0.0.1 and ::1 with CURLOPT_RESOLVE so no
** resolver and no /etc/hosts entry can send it elsewhere, 0 otherwise. The
** one rule for both the proxy bypass and relaxed certificate checks.
*/
int wire_is_loopback(const char *host) {
  char h[64];
  size_t n = strlen(host);
  unsigned char a[16];
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') host++, n -= 2;
  else if (n > 1 && host[n - 1] == '.') n--;        /* "localhost." and "127.0.0.1." */
  if (n == 0 || n >= sizeof h) return 0;
  memcpy(h, host, n);
  h[n] = '\0';
  if (strcasecmp(h, "localhost") == 0) return 2;
  if (inet_pton(AF_INET, h, a) == 1) return a[0] == 127;
  if (inet_pton(AF_INET6, h, a) != 1) return 0;
  if (IN6_IS_ADDR_LOOPBACK((struct in6_addr *)a)) return 1;
  return IN6_IS_ADDR_V4MAPPED((struct in6_addr *)a) && a[12] == 127;
}

static const char *url_syntax(const char *url) {
  const char *sep = strstr(url, "://");
  for (const char *p = url; *p; p++)
    if ((unsigned char)*p <= 0x20 || *p == 0x7f) return "contains a space or control character";
  if (strchr(url, '?') || strchr(url, '#')) return "must not contain a query or fragment";
  /* say what is wrong in the user's terms before curl's parser does; and
  ** curl reads "http:///x" as host x: a user who wrote that forgot the host */
  if (!sep) return "must start with http:// or https://";
  if (sep[3] == '/' || sep[3] == ':' || sep[3] == '\0') return "has no host";
  return NULL;
}

/*
** Check the base URL: http or https, a host, no query or fragment. Sets
** *host to the host part (curl_free it) and *port to the port. Raises on a programmer error; the
** message never shows userinfo.
*/
int wire_base_url(lua_State *L, const char *url, char **host, long *port) {
  CURLU *u = curl_url();
  char *scheme = NULL, *ps = NULL;
  const char *why = url_syntax(url);
  *host = NULL;
  if (u == NULL) return luaL_error(L, "out of memory");
  if (!why && (curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
               curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK))
    why = "is not a valid URL";
  if (!why && strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
    why = "must use http or https";
  if (!why && (curl_url_get(u, CURLUPART_HOST, host, 0) != CURLUE_OK || *host == NULL || !**host))
    why = "has no host";
  if (!why && curl_url_get(u, CURLUPART_PORT, &ps, CURLU_DEFAULT_PORT) == CURLUE_OK && ps)
    *port = atol(ps);
  curl_free(ps);
  curl_free(scheme);
  curl_url_cleanup(u);
  if (why) {
    char *shown = wire_redact(url);
    const char *sep = shown ? strstr(shown, "://") : NULL;
    curl_free(*host);
    *host = NULL;
    if (sep && strchr(sep, '@'))                /* an '@' left: a password with a '/' in it, maybe */
      lua_pushfstring(L, "base_url (not shown: it holds an '@') %s", why);
    else
      lua_pushfstring(L, "base_url '%s' %s", shown ? shown : "?", why);
    free(shown);
    return lua_error(L);
  }
  return 1;
}

/* a malloc'd copy of url without its userinfo ("user:secret@"), or NULL;
** the rule is lib/text.c's (text_strip_userinfo), the one copy */
char *wire_redact(const char *url) {
  size_t n = strlen(url);
  char *out = malloc(n + 1);
  if (out) text_strip_userinfo(url, n, out);
  return out;
}

/* ------------------------------------------------------------ headers */

/* headers that frame or route the request: libcurl writes them from the
** body and the URL; a user copy would make the next request on the
** connection start inside this one's body, or send it elsewhere */
static const char *const framing[] = {
  "Content-Length", "Transfer-Encoding", "Host", "Connection", "Keep-Alive", "Proxy-Connection",
  "Upgrade", "TE", "Trailer", "Expect", NULL
};

void wire_check_header(lua_State *L, const char *name, size_t nl, const char *val, size_t vl) {
  if (nl == 0 || nl > 200) luaL_error(L, "invalid header name '%s'", name);
  for (size_t i = 0; i < nl; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c <= 0x20 || c >= 0x7f || c == ':' || c == ';')
      luaL_error(L, "invalid character in header name '%s'", name);
  }
  for (int i = 0; framing[i]; i++)
    if (strlen(framing[i]) == nl && strncasecmp(framing[i], name, nl) == 0)
      luaL_error(L, "header '%s' cannot be set: it frames or routes the request, and libcurl "
                    "writes it from the body and the URL", name);
  for (size_t i = 0; i < vl; i++)
    if (val[i] == '\r' || val[i] == '\n' || val[i] == '\0')
      luaL_error(L, "header '%s' value contains CR, LF or NUL", name);
}

/* check every Name = value of the table at t (raising on the first bad
** one); returns how many there are. lua_next runs no metamethod. */
int wire_check_headers(lua_State *L, int t) {
  int n = 0;
  t = lua_absindex(L, t);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    size_t nl, vl;
    const char *name, *val;
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "headers must map strings to strings");
    name = lua_tolstring(L, -2, &nl);
    val = lua_tolstring(L, -1, &vl);
    wire_check_header(L, name, nl, val, vl);
    n++;
    lua_pop(L, 1);
  }
  return n;
}

static int has_header(const char *const *list, int n, const char *name, size_t len) {
  for (int i = 0; i < n; i++)
    if (strncasecmp(list[i], name, len) == 0 && list[i][len] == ':') return 1;
  return 0;
}

static struct curl_slist *append(struct curl_slist *l, const char *h, int *ok) {
  struct curl_slist *n;
  if (!*ok) return l;
  n = curl_slist_append(l, h);
  if (n == NULL) *ok = 0;
  return n ? n : l;
}

/* a user's "Name: value"; an empty value goes as "Name;", which libcurl
** sends as "Name:" ("Name:" alone would remove the header instead) */
static struct curl_slist *append_user(struct curl_slist *l, const char *h, int *ok) {
  const char *colon = strchr(h, ':');
  const char *v = colon + 1 + strspn(colon + 1, " ");
  char *semi;
  if (*v != '\0' || !*ok) return append(l, h, ok);
  if ((semi = buf_strndup(h, (size_t)(colon - h) + 1)) == NULL) {
    *ok = 0;
    return l;
  }
  semi[colon - h] = ';';
  l = append(l, semi, ok);
  free(semi);
  return l;
}

/*
** The header list of one request shape. Per-call headers (extra) win over
** the session's (uh), which win over the built-in Accept and Content-Type;
** a user header with an empty value is sent empty, never dropped.
** A body-less POST must not carry the form Content-Type libcurl would add;
** "Content-Type:" removes it. "Expect:" stops libcurl from waiting for a
** 100-continue on larger JSON bodies. NULL when out of memory.
*/
struct curl_slist *wire_header_list(char **uh, int nuh, int shape, const char **extra, int nextra) {
  struct curl_slist *l = NULL;
  const char *const *su = (const char *const *)uh;
  int ok = 1;
  int user_ct = has_header(su, nuh, "Content-Type", 12) || has_header(extra, nextra, "Content-Type", 12);
  if (!has_header(su, nuh, "Accept", 6) && !has_header(extra, nextra, "Accept", 6))
    l = append(l, "Accept: application/json", &ok);
  for (int i = 0; i < nuh; i++)
    if (!has_header(extra, nextra, uh[i], (size_t)(strchr(uh[i], ':') - uh[i])))
      l = append_user(l, uh[i], &ok);
  for (int i = 0; i < nextra; i++) l = append_user(l, extra[i], &ok);
  if (shape == HL_POST0 && !user_ct) l = append(l, "Content-Type:", &ok);
  if (shape == HL_JSON) {
    if (!user_ct) l = append(l, "Content-Type: application/json", &ok);
    l = append(l, "Expect:", &ok);
  }
  if (!ok) {
    curl_slist_free_all(l);
    return NULL;
  }
  return l;
}

/* ------------------------------------------------------------ query */

static int unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '_' || c == '.' || c == '~';
}

/* push the percent-encoding of the string at idx */
static void push_escaped(lua_State *L, int idx) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n;
  const char *p = lua_tolstring(L, idx, &n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (unreserved(c)) {
      luaL_addchar(&b, (char)c);
    } else {
      luaL_addchar(&b, '%');
      luaL_addchar(&b, hex[c >> 4]);
      luaL_addchar(&b, hex[c & 15]);
    }
  }
  luaL_pushresult(&b);
}

/* parts[#parts+1] = escape(key) .. "=" .. escape(value at top); pops the value */
static void add_pair(lua_State *L, int parts, int keyidx) {
  switch (lua_type(L, -1)) {
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, -1) ? "true" : "false");
      lua_replace(L, -2);
      break;
    case LUA_TSTRING: break;
    case LUA_TNUMBER: {                                       /* exact, as in bodies (json.c) */
      char num[JSON_NUMTEXT];
      size_t n = json_number_text(L, -1, num);
      if (n == 0) luaL_error(L, "query value '%s' is NaN or infinite", lua_tostring(L, keyidx));
      lua_pushlstring(L, num, n);
      lua_replace(L, -2);
      break;
    }
    default: luaL_error(L, "query values must be strings, numbers, booleans or arrays of them");
  }
  push_escaped(L, keyidx);                                    /* v, k */
  lua_pushliteral(L, "=");
  push_escaped(L, -3);                                        /* v, k, "=", v' */
  lua_concat(L, 3);
  lua_rawseti(L, parts, (lua_Integer)lua_rawlen(L, parts) + 1);
  lua_pop(L, 1);
}

static int cmp_keys(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
** Push the URL-encoded query of table q: keys sorted so a URL is
** reproducible, array values repeated as k=v1&k=v2. The keys are copied
** into a private table first: a metamethod of a value that changes q frees
** nothing this function still uses.
*/
static void push_query(lua_State *L, int q) {
  int n = 0, top = lua_gettop(L);
  const char **keys;
  luaL_Buffer b;
  lua_newtable(L);                                            /* keys table: top+1 */
  lua_newtable(L);                                            /* parts: top+2 */
  lua_pushnil(L);
  while (lua_next(L, q)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "query keys must be strings");
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawseti(L, top + 1, ++n);
  }
  keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);   /* top+3 */
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, top + 1, i + 1);
    keys[i] = lua_tostring(L, -1);                            /* anchored by the keys table */
    lua_pop(L, 1);
  }
  qsort(keys, (size_t)n, sizeof(char *), cmp_keys);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, keys[i]);                               /* k */
    lua_pushvalue(L, -1);
    lua_gettable(L, q);                                       /* k, v (may run __index) */
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_Integer cnt = luaL_len(L, -1);
      for (lua_Integer j = 1; j <= cnt; j++) {
        lua_geti(L, -1, j);
        add_pair(L, top + 2, -3);
      }
      lua_pop(L, 1);
    } else {
      add_pair(L, top + 2, -2);
    }
    lua_pop(L, 1);                                            /* k */
  }
  luaL_buffinit(L, &b);
  for (int i = 1; i <= (int)lua_rawlen(L, top + 2); i++) {
    if (i > 1) luaL_addchar(&b, '&');
    lua_rawgeti(L, top + 2, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
}

/* ------------------------------------------------------------ the call */

/* the method as given, by its Lua length: an uppercase token, or a raise */
static const char *read_method(lua_State *L, int idx, size_t *len) {
  const char *m = luaL_checklstring(L, idx, len);
  if (*len == 0 || *len > 15) luaL_argerror(L, idx, "invalid HTTP method");
  for (size_t i = 0; i < *len; i++)
    if (m[i] < 'A' || m[i] > 'Z') luaL_argerror(L, idx, "HTTP method must be an uppercase token");
  return m;
}

/*
** The path as it goes on the wire, byte for byte, or a raise: it starts
** with '/'; it holds printable ASCII only (no space, control byte, byte
** above 0x7E: those must be percent-encoded) and no '#' (a fragment is never
** sent: percent-encode it as %23); no segment before a '?' is "." or ".." (libcurl would
** remove them, and ".." would climb out of the base URL's path).
*/
static const char *read_path(lua_State *L, int idx, size_t *len) {
  const char *p = luaL_checklstring(L, idx, len);
  int query = 0;
  if (*len == 0 || p[0] != '/') luaL_argerror(L, idx, "path must start with '/'");
  for (size_t i = 0; i < *len; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c <= 0x20 || c >= 0x7f)
      luaL_argerror(L, idx, "path contains a space, control character or non-ASCII byte "
                            "(percent-encode it, e.g. %20 or %C3%A9)");
    if (c == '#') luaL_argerror(L, idx, "path contains '#' (percent-encode it as %23)");
    if (c == '?') query = 1;                            /* the query is not a path: sent as it is */
    if (c == '/' && !query && p[i + 1] == '.') {
      size_t d = (i + 2 < *len && p[i + 2] == '.') ? 3 : 2;
      if (i + d == *len || p[i + d] == '/' || p[i + d] == '?')
        luaL_argerror(L, idx, "path has a '.' or '..' segment (it would not be sent as given)");
    }
  }
  return p;
}

/* per-call headers at h: "Name: value" strings anchored in a table pushed at
** the top, and an array of pointers to them (a userdata pushed above it) */
static void read_headers(lua_State *L, int h, callspec *cs) {
  int n = wire_check_headers(L, h);
  lua_newtable(L);                                            /* anchors */
  lua_pushnil(L);
  while (lua_next(L, h)) {
    lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
    lua_rawseti(L, -4, ++cs->nh);
    lua_pop(L, 1);
  }
  (void)n;
  cs->hv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(cs->nh ? cs->nh : 1), 0);
  for (int i = 0; i < cs->nh; i++) {
    lua_rawgeti(L, -2, i + 1);
    cs->hv[i] = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
}

/* the options of a call, in the order they are read */
enum { OPT_QUERY, OPT_BODY, OPT_TIMEOUT, OPT_REPEATABLE, OPT_HEADERS, OPT_COUNT };
static const char *const OPT_NAMES[OPT_COUNT] = { "query", "body", "timeout", "repeatable", "headers" };

/* which option the key at idx names, or raises (an unknown key) */
static int opt_of(lua_State *L, int idx) {
  size_t n;
  const char *k = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &n) : NULL;
  for (int i = 0; k && i < OPT_COUNT; i++)
    if (strlen(OPT_NAMES[i]) == n && memcmp(k, OPT_NAMES[i], n) == 0) return i;
  return luaL_error(L, "unknown request option '%s'", k ? k : "?");
}

/*
** The options table at t, read into the OPT_COUNT slots from `slots` on
** (nil when absent). A table without a metatable is read in one pass of
** lua_next: what lua_getfield would find, with no user code to run. One
** with a metatable is checked for unknown keys, then each slot is filled
** by lua_getfield just before it is used (get_opt), so its __index runs
** in the order it always did.
*/
static int gather_opts(lua_State *L, int t, int slots) {
  int raw = !lua_getmetatable(L, t);
  if (!raw) lua_pop(L, 1);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    int i = opt_of(L, -2);
    if (raw) lua_replace(L, slots + i);
    else lua_pop(L, 1);
  }
  return raw;
}

/* option i into its slot (raw: gathered already); returns its type */
static int get_opt(lua_State *L, int t, int slots, int raw, int i) {
  if (!raw) {
    lua_getfield(L, t, OPT_NAMES[i]);
    lua_replace(L, slots + i);
  }
  return lua_type(L, slots + i);
}

static void read_body(lua_State *L, int idx, callspec *cs) {
  if (lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL)   /* ibkr.null */
    luaL_error(L, "body must be a table, a string or ibkr.empty_array");
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return;
    case LUA_TSTRING: break;
    case LUA_TLIGHTUSERDATA:              /* ibkr.empty_array is []; the encoder refuses others */
    case LUA_TTABLE:
      json_encode(L, idx);
      lua_replace(L, idx);
      break;
    default: luaL_error(L, "body must be a table, a string or ibkr.empty_array");
  }
  cs->has_body = 1;
  cs->body = lua_tolstring(L, idx, &cs->blen);
}

static double read_timeout(lua_State *L, int idx) {
  double v;
  if (lua_isnil(L, idx)) return 0;
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_error(L, "request option 'timeout' must be a number");
  v = lua_tonumber(L, idx);
  if (!(v > 0) || isinf(v)) luaL_error(L, "request option 'timeout' must be a positive number");
  return v;
}

static int shape_of(const callspec *cs) {
  int posty = (cs->mlen == 4 && memcmp(cs->method, "POST", 4) == 0) ||
              (cs->mlen == 3 && memcmp(cs->method, "PUT", 3) == 0) ||
              (cs->mlen == 5 && memcmp(cs->method, "PATCH", 5) == 0);
  if (cs->has_body) return HL_JSON;
  return posty ? HL_POST0 : HL_NOBODY;
}

/* URL = base .. path [.. "?" or "&" .. query], malloc'd; NULL when out of memory */
char *wire_url(const char *base, size_t baselen, const callspec *cs) {
  size_t n = baselen + cs->plen + (cs->qlen ? cs->qlen + 1 : 0);
  char *u = malloc(n + 1), *p = u;
  if (u == NULL) return NULL;
  memcpy(p, base, baselen);
  p += baselen;
  memcpy(p, cs->path, cs->plen);
  p += cs->plen;
  if (cs->qlen) {
    *p++ = memchr(cs->path, '?', cs->plen) ? '&' : '?';
    memcpy(p, cs->query, cs->qlen);
    p += cs->qlen;
  }
  *p = '\0';
  return u;
}

/*
** Read method, path and options (at first, first+1, first+2) into cs. The
** stack is set to first+2 and gets the option slots (query string or nil,
** body or nil, timeout, repeatable, headers), then header anchors and
** header pointers. Raises on a programmer error, before anything of the
** session is touched.
*/
void wire_read_call(lua_State *L, int first, callspec *cs) {
  int o = first + 2, slots = o + 1, raw = 1;
  memset(cs, 0, sizeof *cs);
  cs->method = read_method(L, first, &cs->mlen);
  cs->path = read_path(L, first + 1, &cs->plen);
  if (!lua_isnoneornil(L, o)) luaL_checktype(L, o, LUA_TTABLE);
  lua_settop(L, o);
  for (int i = 0; i < OPT_COUNT; i++) lua_pushnil(L);
  if (!lua_isnil(L, o)) {
    raw = gather_opts(L, o, slots);
    if (get_opt(L, o, slots, raw, OPT_QUERY) == LUA_TTABLE) {
      push_query(L, slots + OPT_QUERY);
      lua_replace(L, slots + OPT_QUERY);
    } else if (!lua_isnil(L, slots + OPT_QUERY)) {
      luaL_error(L, "query must be a table");
    }
    get_opt(L, o, slots, raw, OPT_BODY);
    read_body(L, slots + OPT_BODY, cs);
    get_opt(L, o, slots, raw, OPT_TIMEOUT);
    cs->timeout = read_timeout(L, slots + OPT_TIMEOUT);
    if (get_opt(L, o, slots, raw, OPT_REPEATABLE) != LUA_TNIL && !lua_isboolean(L, slots + OPT_REPEATABLE))
      luaL_error(L, "request option 'repeatable' must be a boolean");
    cs->repeatable = lua_toboolean(L, slots + OPT_REPEATABLE);
    if (get_opt(L, o, slots, raw, OPT_HEADERS) == LUA_TTABLE) read_headers(L, slots + OPT_HEADERS, cs);
    else if (!lua_isnil(L, slots + OPT_HEADERS)) luaL_error(L, "headers must be a table");
  }
  if (lua_type(L, slots + OPT_QUERY) == LUA_TSTRING) cs->query = lua_tolstring(L, slots + OPT_QUERY, &cs->qlen);
  if (cs->has_body && ((cs->mlen == 3 && memcmp(cs->method, "GET", 3) == 0) ||
                       (cs->mlen == 4 && memcmp(cs->method, "HEAD", 4) == 0)))
    luaL_error(L, "a %s request cannot carry a body (send it with POST, PUT or PATCH)", cs->method);
  cs->shape = shape_of(cs);
}

/* ------------------------------------------------------------ module functions */

/* core.check_path(path): the path rule of perform/start alone, for callers
** that want to refuse a bad path at their caller's line; raises */
static int core_check_path(lua_State *L) {
  size_t n;
  read_path(L, 1, &n);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.check_headers(t): the header rule of core.new, for callers that want
** to refuse bad per-call headers before anything else happens */
static int core_check_headers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  wire_check_headers(L, 1);
  lua_pushboolean(L, 1);
  return 1;
}

/* ------------------------------------------------------------ response headers */

#define NAME_MAX_LEN 256            /* a longer field name is skipped */

/* s[0..n) without the spaces and tabs around it: the new length, *s moved */
static size_t trim_ows(const char **s, size_t n) {
  while (n > 0 && (**s == ' ' || **s == '\t')) (*s)++, n--;
  while (n > 0 && ((*s)[n - 1] == ' ' || (*s)[n - 1] == '\t')) n--;
  return n;
}

/*
** The value v[0..vn) of the field named at `name` into the table at t: the
** first, or after the one it has, joined with sep; set-cookie (list) gets a
** list of its values instead, and a continued line (sep " ") joins its last.
*/
static void field_add(lua_State *L, int t, int name, const char *v, size_t vn, const char *sep, int list) {
  lua_pushvalue(L, name);
  if (list) {
    lua_Integer n;
    if (lua_rawget(L, t) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, name);
      lua_pushvalue(L, -2);
      lua_rawset(L, t);
    }
    n = (lua_Integer)lua_rawlen(L, -1);
    if (*sep == ' ' && n > 0) {                               /* a continued line joins the last */
      lua_rawgeti(L, -1, n);
      lua_pushstring(L, sep);
      lua_pushlstring(L, v, vn);
      lua_concat(L, 3);
      lua_rawseti(L, -2, n);
    } else {
      lua_pushlstring(L, v, vn);
      lua_rawseti(L, -2, n + 1);
    }
    lua_pop(L, 1);
    return;
  }
  if (lua_rawget(L, t) == LUA_TSTRING) {
    lua_pushstring(L, sep);
    lua_pushlstring(L, v, vn);
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, v, vn);
  }
  lua_pushvalue(L, name);
  lua_insert(L, -2);
  lua_rawset(L, t);
}

/* the field name line[0..nl), lower-cased, pushed; 0 (nothing pushed) when
** it is empty, too long, or has a byte no field name may have */
static int push_name(lua_State *L, const char *line, size_t nl) {
  char low[NAME_MAX_LEN];
  if (nl == 0 || nl > sizeof low) return 0;
  for (size_t i = 0; i < nl; i++) {
    unsigned char c = (unsigned char)line[i];
    if (c <= 0x20 || c >= 0x7f) return 0;
    low[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
  }
  lua_pushlstring(L, low, nl);
  return 1;
}

/*
** core.parse_headers(block) -> table: a response's header block (its
** status line, then "Name: value" lines, as libcurl hands them over: the
** second value's meta.headers of an ibkr call). Names are lower-cased,
** values lose the spaces around them; a line starting with a space or tab
** continues the previous value (obs-fold, RFC 9112 section 5.2: joined with
** one space); a repeated field is joined with ", " (RFC 9110 section 5.3),
** but set-cookie is always a list of its values (RFC 9110 section 5.3 and
** RFC 6265 section 3: they cannot be joined). A status line, a line without
** a colon or with a bad name is skipped; an empty line ends the block.
*/
static int core_parse_headers(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n), *end = p + n;
  int cookie = 0, lines = 0;
  for (const char *q = p; (q = memchr(q, '\n', (size_t)(end - q))) != NULL; q++) lines++;
  lua_settop(L, 1);
  lua_createtable(L, 0, lines > 1 ? lines - 1 : 0);           /* 2: the headers, at their size */
  lua_pushnil(L);                                             /* 3: the last field's name */
  while (p < end) {
    const char *line = p, *eol = memchr(p, '\n', (size_t)(end - p)), *v, *colon;
    size_t len = (size_t)((eol ? eol : end) - p);
    p = eol ? eol + 1 : end;
    if (len > 0 && line[len - 1] == '\r') len--;
    if (len == 0) break;
    if (line[0] == ' ' || line[0] == '\t') {                 /* obs-fold */
      v = line;
      if (!lua_isnil(L, 3)) field_add(L, 2, 3, v, trim_ows(&v, len), " ", cookie);
      continue;
    }
    colon = memchr(line, ':', len);
    if (!colon || (len >= 5 && memcmp(line, "HTTP/", 5) == 0) || !push_name(L, line, (size_t)(colon - line))) {
      lua_pushnil(L);
      lua_replace(L, 3);
      continue;
    }
    lua_replace(L, 3);
    cookie = colon - line == 10 && strncasecmp(line, "set-cookie", 10) == 0;
    v = colon + 1;
    field_add(L, 2, 3, v, trim_ows(&v, (size_t)(line + len - v)), ", ", cookie);
  }
  lua_settop(L, 2);
  return 1;
}

static const luaL_Reg wire_funcs[] = {
  {"check_path", core_check_path},
  {"check_headers", core_check_headers},
  {"parse_headers", core_parse_headers},
  {NULL, NULL}
};

/* adds core.check_path, core.check_headers and core.parse_headers to the
** module at the top */
int wire_open(lua_State *L) {
  luaL_setfuncs(L, wire_funcs, 0);
  return 0;
}
