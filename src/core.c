/*
** core.c -- the ibkr.core module: module table, the session class and the
** non-blocking request class. Transport lives in request.c, decoding in
** decode.c, error objects in error.c.
*/
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "ibkr.h"

/* ------------------------------------------------------------ global init */

/* curl_global_init is not re-entrant: once per process, whatever the number
** of lua_States or reloads (busted runs luaopen once per spec file) */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_code = CURLE_OK;

static void init_curl(void) {
  curl_init_code = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---------------------------------------------------------------- helpers */

static session *tosession(lua_State *L) {
  return (session *)luaL_checkudata(L, 1, SESSION_MT);
}

void ibkr_check_header(lua_State *L, const char *name, size_t nl, const char *val, size_t vl) {
  if (nl == 0 || nl > 200) luaL_error(L, "invalid header name '%s'", name);
  for (size_t i = 0; i < nl; i++) {
    unsigned char c = (unsigned char)name[i];
    if (c <= 0x20 || c >= 0x7f || c == ':')
      luaL_error(L, "invalid character in header name '%s'", name);
  }
  for (size_t i = 0; i < vl; i++)
    if (val[i] == '\r' || val[i] == '\n' || val[i] == '\0')
      luaL_error(L, "header '%s' value contains CR, LF or NUL", name);
}

static double opt_number(lua_State *L, int t, const char *k, double def) {
  double v;
  int t2 = lua_getfield(L, t, k);
  if (t2 == LUA_TNIL) v = def;
  else if (t2 != LUA_TNUMBER) return luaL_error(L, "option '%s' must be a number", k), 0;
  else v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(v > 0) || v != v || isinf(v)) luaL_error(L, "option '%s' must be a positive number", k);
  return v;
}

static const char *opt_string(lua_State *L, int t, const char *k) {
  int ty = lua_getfield(L, t, k);
  const char *s = NULL;
  size_t len;
  if (ty == LUA_TSTRING) {
    s = lua_tolstring(L, -1, &len);                     /* anchored by t */
    if (memchr(s, '\0', len)) luaL_error(L, "option '%s' contains a NUL byte", k);
  } else if (ty != LUA_TNIL) luaL_error(L, "option '%s' must be a string", k);
  lua_pop(L, 1);
  return s;
}

/* loopback: localhost, 127.0.0.0/8, ::1 (curl's host part keeps IPv6 brackets) */
static int is_loopback(const char *host) {
  unsigned a, b, c, d;
  char extra;
  if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0) return 1;
  if (strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0) return 1;
  if (sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &extra) == 4)
    return a == 127 && b < 256 && c < 256 && d < 256;
  return 0;
}

/*
** Check the base URL: http or https, a host, no query or fragment. Returns
** whether the host is a loopback one; raises on a programmer error.
*/
static int check_base_url(lua_State *L, const char *url) {
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL;
  int ok, loop = 0;
  const char *why = NULL;
  if (u == NULL) return luaL_error(L, "out of memory");
  for (const char *p = url; *p; p++)
    if ((unsigned char)*p <= 0x20 || *p == 0x7f) why = "contains a space or control character";
  if (!why && (strchr(url, '?') || strchr(url, '#'))) why = "must not contain a query or fragment";
  {
    /* say what is wrong in the user's terms before curl's parser does; and
    ** curl reads "http:///x" as host x: a user who wrote that forgot the host */
    const char *sep = strstr(url, "://");
    if (!why && !sep) why = "must start with http:// or https://";
    if (!why && (sep[3] == '/' || sep[3] == ':' || sep[3] == '\0')) why = "has no host";
  }
  ok = !why && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
       curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK;
  if (!why && !ok) why = "is not a valid URL";
  if (!why && strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
    why = "must use http or https";
  if (!why && (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host == NULL || !*host))
    why = "has no host";
  if (!why) loop = is_loopback(host);
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(u);
  if (why) return luaL_error(L, "base_url '%s' %s", url, why);
  return loop;
}

/* ---------------------------------------------------------------- session */

/*
** Free everything a session holds. Shared by close(), __close and __gc, so
** it must be idempotent. An in-flight non-blocking request is detached: it
** will report kind "closed".
*/
static void session_free(session *s) {
  if (s->owner) {
    s->owner->s = NULL;
    s->owner->done = 1;
    s->owner->aborted = 1;
    s->owner = NULL;
  }
  if (s->easy) {
    xfer_finish(s);
    s->inuse = 0;
  }
  xfer_sync_free(s);
  if (s->multi) curl_multi_cleanup(s->multi);
  if (s->easy) curl_easy_cleanup(s->easy);
  s->multi = NULL;
  s->easy = NULL;
  for (int i = 0; i < HL_COUNT; i++) {
    curl_slist_free_all(s->hl[i]);
    s->hl[i] = NULL;
  }
  for (int i = 0; i < s->nuh; i++) free(s->uh[i]);
  free(s->uh);
  s->uh = NULL;
  s->nuh = 0;
  free(s->base);
  s->base = NULL;
  ibuf_free(&s->url);
  ibuf_free(&s->lasturl);
  ibuf_free(&s->body);
  s->closed = 1;
}

static int session_gc(lua_State *L) {
  session_free(tosession(L));
  return 0;
}

static int session_close(lua_State *L) {
  session_free(tosession(L));
  return 0;
}

static int session_closed(lua_State *L) {
  lua_pushboolean(L, tosession(L)->closed);
  return 1;
}

static int session_busy(lua_State *L) {
  lua_pushboolean(L, tosession(L)->inuse);
  return 1;
}

static int session_tostring(lua_State *L) {
  session *s = tosession(L);
  if (s->closed) lua_pushliteral(L, "ibkr.session (closed)");
  else lua_pushfstring(L, "ibkr.session (%s)", s->base);
  return 1;
}

static int session_info(lua_State *L) {
  session *s = tosession(L);
  lua_createtable(L, 0, 3);
  ibkr_seti(L, "connects", s->connects);
  ibkr_seti(L, "exchanges", s->exchanges);
  ibkr_sets(L, "base_url", s->base);
  return 1;
}

static char *dupstr(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

/*
** core.new(opts). Every check that can raise runs before the session owns
** anything, or after it is a userdata with its metatable (the newprefile
** way), so a raise never leaks: __gc frees what exists.
*/
static int core_new(lua_State *L) {
  session *s;
  const char *url, *ua, *ca;
  double timeout, ctimeout;
  lua_Integer max_body = 8 * 1024 * 1024;
  int verify = -1, loop, nh = 0;
  size_t ulen;
  char err[256];

  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);                           /* the headers table goes to index 2 */
  if (curl_init_code != CURLE_OK)
    return luaL_error(L, "curl_global_init failed: %s", curl_easy_strerror(curl_init_code));
  url = opt_string(L, 1, "base_url");
  if (url == NULL) return luaL_error(L, "option 'base_url' is required");
  loop = check_base_url(L, url);
  ua = opt_string(L, 1, "user_agent");
  if (ua) ibkr_check_header(L, "User-Agent", 10, ua, strlen(ua));
  ca = opt_string(L, 1, "ca_file");
  timeout = opt_number(L, 1, "timeout", 10);
  ctimeout = opt_number(L, 1, "connect_timeout", 3);
  switch (lua_getfield(L, 1, "verify")) {
    case LUA_TNIL: break;
    case LUA_TBOOLEAN: verify = lua_toboolean(L, -1); break;
    default: return luaL_error(L, "option 'verify' must be a boolean");
  }
  lua_pop(L, 1);
  if (lua_getfield(L, 1, "max_body") != LUA_TNIL) {
    int isint;
    max_body = lua_tointegerx(L, -1, &isint);
    if (!isint || max_body <= 0) return luaL_error(L, "option 'max_body' must be a positive integer");
  }
  lua_pop(L, 1);
  switch (lua_getfield(L, 1, "headers")) {    /* stays at index 2 */
    case LUA_TNIL: break;
    case LUA_TTABLE:
      nh = ibkr_check_headers(L, 2);
      break;
    default: return luaL_error(L, "option 'headers' must be a table");
  }

  s = lua_newuserdatauv(L, sizeof(session), 0);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, SESSION_MT);
  s->closed = 1;                              /* until fully built */
  ulen = strlen(url);
  while (ulen > 0 && url[ulen - 1] == '/') ulen--;
  s->base = dupstr(url, ulen);
  s->baselen = ulen;
  s->max_body = (size_t)max_body;
  s->easy = curl_easy_init();
  s->multi = curl_multi_init();
  xfer_sync_init(s);          /* without it, requests step in place */
  if (nh) s->uh = calloc((size_t)nh, sizeof(char *));
  if (!s->base || !s->easy || !s->multi || (nh && !s->uh)) return luaL_error(L, "out of memory");
  if (nh) {
    lua_pushnil(L);
    while (lua_next(L, 2)) {
      size_t nl, vl;
      const char *n = lua_tolstring(L, -2, &nl), *v = lua_tolstring(L, -1, &vl);
      char *h = malloc(nl + vl + 3);
      if (h == NULL) return luaL_error(L, "out of memory");
      memcpy(h, n, nl);
      memcpy(h + nl, ": ", 2);
      memcpy(h + nl + 2, v, vl + 1);
      s->uh[s->nuh++] = h;
      lua_pop(L, 1);
    }
  }
  if (!xfer_setup(s, err, sizeof err)) return luaL_error(L, "%s", err);
  xfer_build_headers(L, s);
  if (verify < 0) verify = ca != NULL || !loop;
  if (ca) verify = 1;
  curl_easy_setopt(s->easy, CURLOPT_SSL_VERIFYPEER, (long)verify);
  curl_easy_setopt(s->easy, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
  if (ca && curl_easy_setopt(s->easy, CURLOPT_CAINFO, ca) != CURLE_OK)
    return luaL_error(L, "cannot set ca_file");
  if (!verify) {
    /* nothing to verify against: don't make OpenSSL parse the system CA
    ** bundle on connect, which costs milliseconds inside one step */
    curl_easy_setopt(s->easy, CURLOPT_CAINFO, NULL);
    curl_easy_setopt(s->easy, CURLOPT_CAPATH, NULL);
  }
  /* clamp before the cast: a double beyond LONG_MAX is undefined behaviour
  ** (1e12 ms is 31 years, "no limit" for a session) */
  curl_easy_setopt(s->easy, CURLOPT_TIMEOUT_MS, (long)ceil(fmin(timeout * 1000, 1e12)));
  curl_easy_setopt(s->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)ceil(fmin(ctimeout * 1000, 1e12)));
  if (ua) curl_easy_setopt(s->easy, CURLOPT_USERAGENT, ua);
  else curl_easy_setopt(s->easy, CURLOPT_USERAGENT, "lua-ibkr/" IBKR_VERSION);
  curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, 4L);
  s->closed = 0;
  return 1;
}

/* method, path, opts at 2, 3, 4: check them, raising on a programmer error */
static const char *check_call(lua_State *L) {
  const char *method = luaL_checkstring(L, 2);
  size_t n = strlen(method);
  luaL_checkstring(L, 3);
  if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 4);
  if (n == 0 || n > 15) luaL_argerror(L, 2, "invalid HTTP method");
  for (size_t i = 0; i < n; i++)
    if (method[i] < 'A' || method[i] > 'Z') luaL_argerror(L, 2, "HTTP method must be an uppercase token");
  return method;
}

/*
** s:perform(method, path [, opts]) -- the blocking exchange: begin, wait on
** curl_multi_poll, convert. The body string stays anchored on the stack.
*/
static int session_perform(lua_State *L) {
  session *s = tosession(L);
  const char *method = check_call(L);
  int n;
  if (s->closed) return ibkr_fail(L, "closed", "session is closed", 2, 3);
  if (s->inuse) return ibkr_fail(L, "busy", "a request of this session is in flight", 2, 3);
  xfer_begin(L, s, method, 3, lua_istable(L, 4) ? 4 : 0);   /* 5 = body */
  xfer_wait(s, -1);
  xfer_finish(s);
  n = xfer_push_result(L, s, 2, 3);
  xfer_release(s);
  return n;
}

/* ---------------------------------------------------------------- request */

/* user values of a request userdata */
enum { RUV_SESSION = 1, RUV_METHOD, RUV_PATH, RUV_BODY, RUV_RESULT, RUV_ERROR, RUV_COUNT = RUV_ERROR };

static request *torequest(lua_State *L) {
  return (request *)luaL_checkudata(L, 1, REQUEST_MT);
}

/* detach a request from its session, aborting an unfinished transfer */
static void request_free(request *r) {
  session *s = r->s;
  if (s && s->owner == r) xfer_release(s);
  r->s = NULL;
  r->done = 1;
}

static int request_gc(lua_State *L) {
  request_free(torequest(L));
  return 0;
}

/*
** s:start(method, path [, opts]) -- begin an exchange without blocking.
** The request userdata is pushed (empty, with its metatable) before the
** transfer is begun, so a raise in between leaves nothing behind.
*/
static int session_start(lua_State *L) {
  session *s = tosession(L);
  const char *method = check_call(L);
  request *r;
  if (s->closed) return ibkr_fail(L, "closed", "session is closed", 2, 3);
  if (s->inuse) return ibkr_fail(L, "busy", "a request of this session is in flight", 2, 3);
  r = lua_newuserdatauv(L, sizeof(request), RUV_COUNT);          /* 5 = request */
  memset(r, 0, sizeof *r);
  r->done = 1;
  luaL_setmetatable(L, REQUEST_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, 5, RUV_SESSION);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 5, RUV_METHOD);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, 5, RUV_PATH);
  xfer_begin(L, s, method, 3, lua_istable(L, 4) ? 4 : 0);   /* 6 = body */
  lua_setiuservalue(L, 5, RUV_BODY);          /* POSTFIELDS points into it */
  r->s = s;
  r->done = 0;
  s->owner = r;
  xfer_spawn(s);
  return 1;
}

static int request_step(lua_State *L) {
  request *r = torequest(L);
  double wait = 0;
  if (r->done || r->s == NULL || xfer_step(r->s, &wait)) {
    if (r->s && !r->done) xfer_finish(r->s);
    r->done = 1;
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_pushnumber(L, wait);
  return 2;
}

static int request_wait(lua_State *L) {
  request *r = torequest(L);
  double timeout = luaL_optnumber(L, 2, -1);
  if (!r->done && r->s && xfer_wait(r->s, timeout)) {
    xfer_finish(r->s);
    r->done = 1;
  }
  lua_pushboolean(L, r->done);
  return 1;
}

/*
** req:result() -- the same values as s:perform. Built once, then cached in
** the user values so the session can be released for the next exchange.
*/
static int request_result(lua_State *L) {
  request *r = torequest(L);
  lua_settop(L, 1);
  if (!r->collected) {
    int n;
    if (!r->done) {
      lua_getiuservalue(L, 1, RUV_METHOD);
      lua_getiuservalue(L, 1, RUV_PATH);
      return ibkr_fail(L, "busy", "request not finished: step() it until it returns true", 2, 3);
    }
    lua_getiuservalue(L, 1, RUV_METHOD);                    /* 2 */
    lua_getiuservalue(L, 1, RUV_PATH);                      /* 3 */
    if (r->s == NULL)
      n = ibkr_fail(L, "closed", r->aborted ? "session closed during the request" : "request is closed", 2, 3);
    else {
      n = xfer_push_result(L, r->s, 2, 3);
      if (n == 3) {
        r->status = (long)lua_tointeger(L, -1);
        lua_pop(L, 1);
      }
    }
    lua_setiuservalue(L, 1, RUV_ERROR);
    lua_setiuservalue(L, 1, RUV_RESULT);
    r->collected = 1;
    request_free(r);
  }
  lua_getiuservalue(L, 1, RUV_RESULT);
  lua_getiuservalue(L, 1, RUV_ERROR);
  if (r->status) {
    lua_pushinteger(L, r->status);
    return 3;
  }
  return 2;
}

static int request_close(lua_State *L) {
  request_free(torequest(L));
  return 0;
}

static int request_done(lua_State *L) {
  lua_pushboolean(L, torequest(L)->done);
  return 1;
}

static int request_tostring(lua_State *L) {
  request *r = torequest(L);
  lua_pushfstring(L, "ibkr.request (%s)", r->done ? "done" : "in flight");
  return 1;
}

/* ---------------------------------------------------------------- module */

static int core_error(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 1, "error needs a string 'kind'");
  lua_settop(L, 1);
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
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  lua_pushnumber(L, (lua_Number)t.tv_sec + (lua_Number)t.tv_nsec / 1e9);
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

/* core.check_headers(t): the header rule of core.new, for callers that want
** to refuse bad per-call headers before anything else happens */
static int core_check_headers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  ibkr_check_headers(L, 1);
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
  {"new", core_new},
  {"error", core_error},
  {"is_error", core_is_error},
  {"monotonic", core_monotonic},
  {"sleep", core_sleep},
  {"curl_version", core_curl_version},
  {"check_headers", core_check_headers},
  {"decode", core_decode},
  {"null", NULL},
  {"_VERSION", NULL},
  {NULL, NULL}
};

static const luaL_Reg session_meth[] = {
  {"perform", session_perform},
  {"start", session_start},
  {"close", session_close},
  {"closed", session_closed},
  {"busy", session_busy},
  {"info", session_info},
  {NULL, NULL}
};

static const luaL_Reg session_metameth[] = {
  {"__index", NULL},
  {"__gc", session_gc},
#if LUA_VERSION_NUM >= 504
  {"__close", session_gc},
#endif
  {"__tostring", session_tostring},
  {NULL, NULL}
};

static const luaL_Reg request_meth[] = {
  {"step", request_step},
  {"result", request_result},
  {"wait", request_wait},
  {"close", request_close},
  {"done", request_done},
  {NULL, NULL}
};

static const luaL_Reg request_metameth[] = {
  {"__index", NULL},
  {"__gc", request_gc},
#if LUA_VERSION_NUM >= 504
  {"__close", request_gc},
#endif
  {"__tostring", request_tostring},
  {NULL, NULL}
};

/* metatable `name` with metamethods and an __index table of methods; all
** functions get the shared upvalue found at the top of the stack */
static void createmeta(lua_State *L, const char *name, const luaL_Reg *meth, const luaL_Reg *metameth) {
  luaL_newmetatable(L, name);                   /* up, mt */
  lua_pushvalue(L, -2);                         /* up, mt, up */
  luaL_setfuncs(L, metameth, NUPVALUES);        /* up, mt */
  lua_newtable(L);                              /* up, mt, methods */
  lua_pushvalue(L, -3);                         /* up, mt, methods, up */
  luaL_setfuncs(L, meth, NUPVALUES);            /* up, mt, methods */
  lua_setfield(L, -2, "__index");               /* up, mt */
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);                                /* up */
}

/*
** luaopen: responses are decoded by decode.c; request bodies are encoded by
** a private cjson instance (cjson.new), immune to what scripts do to the
** global cjson's settings. Its encode is the shared upvalue of every
** function.
*/
IBKR_API int luaopen_ibkr_core(lua_State *L) {
  luaL_checkversion(L);
  /* before any libcurl call of this state (curl_url in core.new included) */
  pthread_once(&curl_once, init_curl);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);                            /* cjson */
  lua_getfield(L, -1, "new");
  if (!lua_isfunction(L, -1)) return luaL_error(L, "ibkr.core needs lua-cjson with cjson.new");
  lua_call(L, 0, 1);                            /* cjson, inst */
  lua_getfield(L, -1, "encode");                /* cjson, inst, encode */
  ibkr_error_register(L);
  createmeta(L, SESSION_MT, session_meth, session_metameth);
  createmeta(L, REQUEST_MT, request_meth, request_metameth);
  luaL_newlibtable(L, core_funcs);              /* ..., encode, M */
  lua_insert(L, -2);                            /* ..., M, encode */
  luaL_setfuncs(L, core_funcs, NUPVALUES);      /* ..., M */
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_pushliteral(L, IBKR_VERSION);
  lua_setfield(L, -2, "_VERSION");
  ibkr_oauth_open(L);                           /* [oauth] M.oauth (src/oauth.c) */
  return 1;
}
