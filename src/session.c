/*
** session.c -- the session class: core.new and its options, s:perform
** (blocking, in place), s:start (handed over), close, info. A session has
** no exchange of its own: each call gets a request with its own easy
** handle (pooled), so calls never wait for each other here. The session
** makes each exchange from its configuration (URL, header lists, timeout).
** Adds to the module: core.new, the "ibkr.session" class.
** Called by: core.c, websocket.c (session_parts).
** Calls: request.c, wire.c, error.c, signal.c, lib/transfer.c, lib/engine.c, lib/buf.c.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ibkr.h"
#include "lib/buf.h"
#include "lib/engine.h"

/* Set by core.new, read-only afterwards; owned by the Lua thread. */
typedef struct sconf {
  char *base;                 /* base URL without trailing '/' */
  size_t baselen;
  char *shown;                /* base URL without userinfo: for tostring/info */
  struct curl_slist *hl[HL_COUNT];
  char **uh;                  /* user headers, "Name: value", malloc'd */
  int nuh;
  long timeout_ms;
  size_t max_body;
  long long ca_not_after;     /* earliest notAfter (epoch s) of the ca_file's certificates, or 0 */
  char *ua;                   /* the User-Agent sent (a websocket's upgrade is written by websocket.c) */
} sconf;

/*
** The URLs of a session's recent calls, parsed once (CURLOPT_CURLU): given
** a URL text, libcurl 7.88 parses it and builds it again in its printf on
** every exchange, about 10k instructions, as much as a session call spends
** in everything else of ours. A session's calls go to a few paths again and
** again (the session endpoints); the parsed URL is kept for the next call,
** up to URLS_MAX of them, the oldest replaced. The engine thread never reads
** them (an exchange it may run gets a copy of its own).
*/
#define URLS_MAX 16
typedef struct urlent {
  char *url;                  /* base, path, query */
  size_t len;
  CURLU *uh;                  /* it, parsed */
} urlent;

/* The parts of a session, one owner each (all on the Lua thread: the engine
** thread only ever sees xfers, and a lane lent to it). */
typedef struct session {
  sconf conf;                 /* session.c: set by core.new, read-only afterwards */
  xhome home;                 /* lib/transfer.c: handles, pool, live exchanges, counters */
  int closed;                 /* session.c */
  urlent urls[URLS_MAX];      /* session.c: the parsed URLs of recent calls */
  int nurls, urlnext;         /* entries in use; the next one replaced when all are */
  xfer own;                   /* session.c: the exchange of a blocking call, reused call after call */
  int own_busy;               /* session.c: `own` is running or its result is being built */
} session;

/* the longest string libcurl takes for an option (CURL_MAX_INPUT_LENGTH in
** its sources): a longer URL or user agent is refused, and would be sent
** without */
#define URL_MAX 8000000

/* core.new options, read before anything is allocated */
typedef struct newopts {
  const char *url, *ua, *ca, *proxy;
  double timeout, ctimeout;
  lua_Integer max_body;
  int verify, nh;
} newopts;

static session *tosession(lua_State *L) {
  return (session *)luaL_checkudata(L, 1, SESSION_MT);
}

/* the session was opened by this process (not inherited through fork()) */
static int ours(session *s) {
  return s->home.gen == engine_generation();
}

/*
** Free everything a session holds. Shared by close(), __close and __gc, so
** it must be idempotent. Live exchanges are stopped; their requests report
** kind "closed".
*/
static void session_free(session *s) {
  sconf *c = &s->conf;
  transfer_home_close(&s->home, !ours(s));
  for (int i = 0; i < s->nurls; i++) {
    free(s->urls[i].url);
    curl_url_cleanup(s->urls[i].uh);          /* memory only: freed in a forked child too */
  }
  s->nurls = 0;
  for (int i = 0; i < HL_COUNT; i++) {
    curl_slist_free_all(c->hl[i]);
    c->hl[i] = NULL;
  }
  for (int i = 0; i < c->nuh; i++) free(c->uh[i]);
  free(c->uh);
  free(c->base);
  free(c->shown);
  free(c->ua);
  c->uh = NULL;
  c->nuh = 0;
  c->base = c->shown = c->ua = NULL;
  s->closed = 1;
}

static int session_close(lua_State *L) {
  session_free(tosession(L));
  return 0;
}

static int session_closed(lua_State *L) {
  lua_pushboolean(L, tosession(L)->closed);
  return 1;
}

/* whether a request of this session is in flight (never a reason to wait:
** calls run side by side) */
static int session_busy(lua_State *L) {
  lua_pushboolean(L, tosession(L)->home.nlive > 0);
  return 1;
}

static int session_tostring(lua_State *L) {
  session *s = tosession(L);
  if (s->closed) lua_pushliteral(L, "ibkr.session (closed)");
  else lua_pushfstring(L, "ibkr.session (%s)", s->conf.shown);
  return 1;
}

static int session_info(lua_State *L) {
  session *s = tosession(L);
  const struct { const char *k; lua_Integer v; } counts[] = {
    {"connects", (lua_Integer)s->home.connects}, {"exchanges", (lua_Integer)s->home.exchanges},
    {"lane_exchanges", (lua_Integer)s->home.lane_exchanges}, {"in_flight", s->home.nlive},
    {"pooled", s->home.npool},
  };
  lua_createtable(L, 0, 6);
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
    lua_pushinteger(L, counts[i].v);
    lua_setfield(L, -2, counts[i].k);
  }
  if (s->conf.shown) {
    lua_pushstring(L, s->conf.shown);
    lua_setfield(L, -2, "base_url");
  }
  return 1;
}

/* ------------------------------------------------------------ core.new */

static double opt_number(lua_State *L, int t, const char *k, double def) {
  double v;
  int ty = lua_getfield(L, t, k);
  if (ty == LUA_TNIL) v = def;
  else if (ty != LUA_TNUMBER) return luaL_error(L, "option '%s' must be a number", k), 0;
  else v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(v > 0) || isinf(v)) luaL_error(L, "option '%s' must be a positive number", k);
  return v;
}

/* a string option, left on the stack (which anchors it: a metamethod may
** have made it, the options table need not hold it) */
static const char *opt_string(lua_State *L, int t, const char *k) {
  int ty = lua_getfield(L, t, k);
  const char *s = NULL;
  size_t len;
  if (ty == LUA_TSTRING) {
    s = lua_tolstring(L, -1, &len);
    if (memchr(s, '\0', len)) luaL_error(L, "option '%s' contains a NUL byte", k);
  } else if (ty != LUA_TNIL) luaL_error(L, "option '%s' must be a string", k);
  return s;
}

/* reads the options table at 1; pushes base_url, user_agent, ca_file, proxy,
** headers at 2..6 */
static void read_newopts(lua_State *L, newopts *o) {
  memset(o, 0, sizeof *o);
  o->verify = -1;
  o->max_body = 8 * 1024 * 1024;
  lua_settop(L, 1);
  o->url = opt_string(L, 1, "base_url");
  if (o->url == NULL) luaL_error(L, "option 'base_url' is required");
  o->ua = opt_string(L, 1, "user_agent");
  if (o->ua) wire_check_header(L, "User-Agent", 10, o->ua, strlen(o->ua));
  o->ca = opt_string(L, 1, "ca_file");
  o->proxy = opt_string(L, 1, "proxy");
  switch (lua_getfield(L, 1, "headers")) {              /* 6 */
    case LUA_TNIL: break;
    case LUA_TTABLE: o->nh = wire_check_headers(L, 6); break;
    default: luaL_error(L, "option 'headers' must be a table");
  }
  o->timeout = opt_number(L, 1, "timeout", 10);
  o->ctimeout = opt_number(L, 1, "connect_timeout", 3);
  switch (lua_getfield(L, 1, "verify")) {
    case LUA_TNIL: break;
    case LUA_TBOOLEAN: o->verify = lua_toboolean(L, -1); break;
    default: luaL_error(L, "option 'verify' must be a boolean");
  }
  if (lua_getfield(L, 1, "max_body") != LUA_TNIL) {
    int isint;
    o->max_body = lua_tointegerx(L, -1, &isint);
    if (!isint || o->max_body <= 0) luaL_error(L, "option 'max_body' must be a positive integer");
  }
  lua_settop(L, 6);
}

/* the user headers ("Name: value", malloc'd) and the three header lists */
static int build_headers(lua_State *L, sconf *c, int nh, const char *ua) {
  int empty_ua = ua && *ua == '\0';            /* libcurl sends no User-Agent for "": send it empty */
  if ((nh || empty_ua) && (c->uh = calloc((size_t)nh + 1, sizeof(char *))) == NULL) return 0;
  if (empty_ua && (c->uh[c->nuh++] = buf_strndup("User-Agent: ", 12)) == NULL) return 0;
  if (nh) {
    lua_pushnil(L);
    while (lua_next(L, 6)) {
      size_t nl, vl;
      const char *n = lua_tolstring(L, -2, &nl), *v = lua_tolstring(L, -1, &vl);
      char *h = malloc(nl + vl + 3);
      if (h == NULL) return 0;
      memcpy(h, n, nl);
      memcpy(h + nl, ": ", 2);
      memcpy(h + nl + 2, v, vl + 1);
      c->uh[c->nuh++] = h;
      lua_pop(L, 1);
    }
  }
  for (int i = 0; i < HL_COUNT; i++)
    if ((c->hl[i] = wire_header_list(c->uh, c->nuh, i, NULL, 0)) == NULL) return 0;
  return 1;
}

/*
** Who may see the traffic, and what is checked. A loopback gateway never
** goes through a proxy from the environment (a local proxy could answer
** for it); "localhost" is pinned to 127.0.0.1 and ::1 so no resolver can
** send it elsewhere. Certificate checks are off by default only for such
** hosts, and on with a ca_file or an explicit proxy.
*/
static int set_route(CURL *e, xhome *h, const newopts *o, const char *host, long port) {
  int loop = wire_is_loopback(host), verify = o->verify;
  CURLcode c = CURLE_OK;
  if (verify < 0) verify = o->ca != NULL || o->proxy != NULL || !loop;
  if (o->ca) verify = 1;
  size_t hn = strlen(host);
  if (loop == 2 || (loop && hn > 1 && host[hn - 1] == '.')) {   /* localhost(.), 127.0.0.1. */
    char pin[96];
    if (loop == 2) snprintf(pin, sizeof pin, "%s:%ld:127.0.0.1,[::1]", host, port);
    else snprintf(pin, sizeof pin, "%s:%ld:%.*s", host, port, (int)(hn - 1), host);
    if ((h->resolve = curl_slist_append(NULL, pin)) == NULL) return 0;
    c = curl_easy_setopt(e, CURLOPT_RESOLVE, h->resolve);
  }
  if (c == CURLE_OK && o->proxy) c = curl_easy_setopt(e, CURLOPT_PROXY, o->proxy);
  else if (c == CURLE_OK && loop) c = curl_easy_setopt(e, CURLOPT_PROXY, "");
  /* a loopback host is an address, or localhost pinned above: nothing a
  ** resolver could change, so its one DNS cache entry never expires, and
  ** libcurl skips the sweep of the whole cache (71 slots of the multi
  ** handle's) it otherwise makes after every exchange */
  if (c == CURLE_OK && loop && !o->proxy) c = curl_easy_setopt(e, CURLOPT_DNS_CACHE_TIMEOUT, -1L);
  if (c == CURLE_OK) c = curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, (long)verify);
  if (c == CURLE_OK) c = curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
  if (c == CURLE_OK && o->ca) c = curl_easy_setopt(e, CURLOPT_CAINFO, o->ca);
  h->inline_ok = !verify;
  if (c == CURLE_OK && !verify) {
    /* nothing to verify against: don't make OpenSSL parse the system CA
    ** bundle on connect, which costs milliseconds */
    curl_easy_setopt(e, CURLOPT_CAINFO, NULL);
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
  }
  return c == CURLE_OK;
}

/*
** The earliest end of validity (seconds since the epoch) among the
** certificates of the PEM file `path`, or 0 when it holds none that can be
** read. A verification that fails for an expired certificate then says
** when it expired (request.c); a file that cannot be read is libcurl's to
** report. OpenSSL's error queue is left empty: libcurl reads it for its
** own messages.
*/
static long long ca_not_after(const char *path) {
  FILE *f = fopen(path, "r");
  ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);      /* 1970-01-01: differences are epoch seconds */
  X509 *c;
  long long best = 0;
  int day, sec;
  if (f != NULL && epoch != NULL)
    while ((c = PEM_read_X509(f, NULL, NULL, NULL)) != NULL) {
      if (ASN1_TIME_diff(&day, &sec, epoch, X509_get0_notAfter(c))) {
        long long t = (long long)day * 86400 + sec;
        if (t > 0 && (best == 0 || t < best)) best = t;
      }
      X509_free(c);
    }
  if (f != NULL) fclose(f);
  ASN1_TIME_free(epoch);
  ERR_clear_error();
  return best;
}

/* clamp before the cast: a double beyond LONG_MAX is undefined behaviour
** (1e12 ms is 31 years, "no limit" for a session) */
static long to_ms(double secs) {
  return (long)ceil(fmin(secs * 1000, 1e12));
}

static void set_template(lua_State *L, session *s, const newopts *o, const char *host, long port) {
  char err[256];
  CURL *e = transfer_home_open(&s->home, err, sizeof err);
  if (e == NULL) luaL_error(L, "%s", err);
  if (!set_route(e, &s->home, o, host, port)) luaL_error(L, "cannot set the TLS or proxy options");
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, to_ms(o->ctimeout));
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_body);
  const char *ua = o->ua ? o->ua : "lua-ibkr/" IBKR_VERSION;
  if (curl_easy_setopt(e, CURLOPT_USERAGENT, ua) != CURLE_OK)
    luaL_error(L, "option 'user_agent' is longer than libcurl takes (%d bytes)", URL_MAX);
  if ((s->conf.ua = buf_strndup(ua, strlen(ua))) == NULL) luaL_error(L, "out of memory");
}

/*
** core.new(opts). Every check that can raise runs before the session owns
** anything, or after it is a userdata with its metatable (the newprefile
** way), so a raise never leaks: __gc frees what exists.
*/
static int core_new(lua_State *L) {
  session *s;
  newopts o;
  char *host = NULL;
  long port = 0;
  size_t ulen;
  luaL_checktype(L, 1, LUA_TTABLE);
  if (!engine_init()) return luaL_error(L, "curl_global_init failed");
  read_newopts(L, &o);
  s = lua_newuserdatauv(L, sizeof(session), 0);               /* 7 */
  memset(s, 0, sizeof *s);
  s->closed = 1;                                              /* until fully built */
  luaL_setmetatable(L, SESSION_MT);
  wire_base_url(L, o.url, &host, &port);
  ulen = strlen(o.url);
  while (ulen > 0 && o.url[ulen - 1] == '/') ulen--;
  s->conf.base = buf_strndup(o.url, ulen);
  s->conf.baselen = ulen;
  s->conf.shown = s->conf.base ? wire_redact(s->conf.base) : NULL;
  s->conf.max_body = (size_t)o.max_body;
  if (o.ca) s->conf.ca_not_after = ca_not_after(o.ca);
  s->conf.timeout_ms = to_ms(o.timeout);
  if (!s->conf.base || !s->conf.shown || !build_headers(L, &s->conf, o.nh, o.ua)) {
    curl_free(host);
    return luaL_error(L, "out of memory");
  }
  lua_pushstring(L, host);                                    /* anchored; host freed now */
  curl_free(host);
  set_template(L, s, &o, lua_tostring(L, -1), port);
  lua_settop(L, 7);
  s->closed = 0;
  return 1;
}

/* ------------------------------------------------------------ calls */

/* whether entry u holds the URL of cs (its base is the session's) */
static int url_is(const urlent *u, size_t baselen, const callspec *cs) {
  size_t len = baselen + cs->plen + (cs->qlen ? cs->qlen + 1 : 0);
  const char *p = u->url + baselen;
  if (u->len != len || memcmp(p, cs->path, cs->plen) != 0) return 0;
  return cs->qlen == 0 || memcmp(p + cs->plen + 1, cs->query, cs->qlen) == 0;
}

/*
** The parsed URL of cs from the session's cache, parsed and kept now when
** it is not there; NULL when out of memory (the exchange then sets the URL
** text). libcurl parses it with these flags itself: as given (the path was
** checked by wire.c), any scheme (only http and https get this far).
*/
static const urlent *url_of(session *s, const callspec *cs) {
  const sconf *c = &s->conf;
  urlent *u;
  char *url;
  CURLU *uh;
  for (int i = 0; i < s->nurls; i++)
    if (url_is(&s->urls[i], c->baselen, cs)) return &s->urls[i];
  if ((url = wire_url(c->base, c->baselen, cs)) == NULL) return NULL;
  if ((uh = curl_url()) == NULL ||
      curl_url_set(uh, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME | CURLU_PATH_AS_IS) != CURLUE_OK) {
    curl_url_cleanup(uh);
    free(url);
    return NULL;
  }
  if (s->nurls < URLS_MAX) {
    u = &s->urls[s->nurls++];
  } else {                                     /* no exchange holds it: see xopts.lend_uh */
    u = &s->urls[s->urlnext];
    s->urlnext = (s->urlnext + 1) % URLS_MAX;
    free(u->url);
    curl_url_cleanup(u->uh);
  }
  *u = (urlent){ .url = url, .len = strlen(url), .uh = uh };
  return u;
}

/*
** Make x the exchange cs of session s: its URL, its header list (the
** session's for the shape, or one with the per-call headers), its timeout
** (the call's or the session's), then an easy handle (lib/transfer.c).
** blocking: x runs on this thread and is over before any Lua code runs, so
** it may read the session's parsed URL as it is (xopts.lend_uh).
** Runs no Lua code: nothing can close the session in between. Returns 0
** when out of memory (x holds what it got: transfer_close frees it).
*/
static int attach(xfer *x, session *s, const callspec *cs, int blocking) {
  const sconf *c = &s->conf;
  const urlent *u = url_of(s, cs);
  xopts o = {
    .url = u ? NULL : wire_url(c->base, c->baselen, cs),
    .url_ref = u ? u->url : NULL,
    .uh = u ? u->uh : NULL,
    .lend_uh = blocking,
    .headers = c->hl[cs->shape],
    .timeout_ms = cs->timeout > 0 ? to_ms(cs->timeout) : c->timeout_ms,
    .max_body = c->max_body,
    .ca_not_after = c->ca_not_after,
  };
  if ((o.url || o.url_ref) && cs->nh)
    o.headers = o.callh = wire_header_list(c->uh, c->nuh, cs->shape, cs->hv, cs->nh);
  return transfer_open(x, &s->home, cs, &o);
}

/* why attach() failed: libcurl refused an option (x->code), or out of memory */
static const char *attach_error(const xfer *x) {
  return x->code != CURLE_OK ? curl_easy_strerror(x->code) : "out of memory";
}

/* raises when the URL of cs would be longer than libcurl takes */
static void check_url(lua_State *L, const session *s, const callspec *cs) {
  size_t len = s->conf.baselen + cs->plen + (cs->qlen ? cs->qlen + 1 : 0);
  if (len > URL_MAX)
    luaL_error(L, "the URL would be %I bytes, more than libcurl takes (%d): shorten the path or the query",
               (LUAI_UACINT)len, URL_MAX);
}

/* nil, err when the session cannot take a call (closed, or inherited
** through fork()); 0 when it can */
static int refuse(lua_State *L, session *s) {
  if (s->closed) return error_fail(L, KIND_CLOSED, "session is closed", 2, 3);
  if (!ours(s)) return error_fail(L, KIND_CLOSED, "session was opened before fork(): open a new one", 2, 3);
  return 0;
}

/*
** The start of s:start (and of a s:perform that gets a request): the call
** was read from the caller's values first (user code may run then, even
** close the session); then the request is pushed (its allocation may run
** finalisers), the session is checked, and the request is attached to it.
** Returns the request, or NULL with nil, err pushed.
*/
static struct request *begin(lua_State *L, session *s, const callspec *cs, int blocking) {
  struct request *r = request_push(L, 1, 2, 3);
  if (refuse(L, s)) return NULL;
  check_url(L, s, cs);
  if (!attach(request_xfer(r), s, cs, blocking)) luaL_error(L, "%s", attach_error(request_xfer(r)));
  return r;                                   /* (on a raise, its __gc frees what it took) */
}

/*
** A blocking call on the session's own exchange: no request object (no
** userdata, no finaliser, nothing for the collector), since nothing of it
** outlives the call. Everything that can raise either runs before x takes
** anything or finds x closed (request_outcome), so a raise leaves nothing.
*/
static int perform_own(lua_State *L, session *s, const callspec *cs) {
  xfer *x = &s->own;
  sigmark mark;
  int n;
  transfer_init(x);
  s->own_busy = 1;
  if (!attach(x, s, cs, 1)) {
    const char *why = attach_error(x);
    transfer_close(x);
    s->own_busy = 0;
    return luaL_error(L, "%s", why);
  }
  signal_mark(L, &mark);
  if (!transfer_perform(x, signal_asked, &mark)) {
    transfer_close(x);
    s->own_busy = 0;
    return error_fail(L, KIND_CLOSED, "interrupted by a signal during the request", 2, 3);
  }
  n = request_outcome(L, x, 2, 3);
  s->own_busy = 0;
  return n < 0 ? lua_error(L) : n;
}

/*
** For a part that opens a connection of its own with the session's rules
** (websocket.c): what it needs of the open session at idx, filled into p
** (pointers into the session: copy what must outlive it). Returns 1; or 0
** with nil, err pushed (closed, or opened before fork()). Raises when idx
** is not a session.
*/
int session_parts(lua_State *L, int idx, sparts *p) {
  session *s = (session *)luaL_checkudata(L, idx, SESSION_MT);
  if (s->closed || !ours(s)) {
    error_fail(L, KIND_CLOSED, s->closed ? "session is closed" : "session was opened before fork(): open a new one",
               0, 0);
    return 0;
  }
  *p = (sparts){ .base = s->conf.base, .uh = s->conf.uh, .nuh = s->conf.nuh, .ua = s->conf.ua,
                 .timeout_ms = s->conf.timeout_ms, .tmpl = s->home.tmpl, .resolve = s->home.resolve };
  return 1;
}

/* s:perform(method, path [, opts]) -- the blocking exchange, in place on
** the caller's thread, without running Lua code until it is over. A signal
** handler that asks Lua to stop meanwhile (lua5.4's SIGINT) ends it: kind
** "closed", and the interpreter's hook acts on the return. The session's
** own exchange runs it; a call made while that one is busy (from a
** finaliser that runs while its result is built) gets a request of its own. */
static int session_perform(lua_State *L) {
  session *s = tosession(L);
  struct request *r;
  callspec cs;
  sigmark mark;
  wire_read_call(L, 2, &cs);
  if (!s->own_busy) {
    if (refuse(L, s)) return 2;
    check_url(L, s, &cs);
    return perform_own(L, s, &cs);
  }
  if ((r = begin(L, s, &cs, 1)) == NULL) return 2;
  signal_mark(L, &mark);
  if (!transfer_perform(request_xfer(r), signal_asked, &mark)) {
    request_collect(L, lua_gettop(L));                        /* frees the exchange */
    return error_fail(L, KIND_CLOSED, "interrupted by a signal during the request", 2, 3);
  }
  return request_collect(L, lua_gettop(L));
}

/* s:start(method, path [, opts]) -- the same exchange without blocking (in
** the warm lane or on the engine thread); returns the request at once */
static int session_start(lua_State *L) {
  session *s = tosession(L);
  struct request *r;
  callspec cs;
  wire_read_call(L, 2, &cs);
  if ((r = begin(L, s, &cs, 0)) == NULL) return 2;
  transfer_submit(request_xfer(r));
  return 1;
}

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
  {"__gc", session_close},
#if LUA_VERSION_NUM >= 504
  {"__close", session_close},
#endif
  {"__tostring", session_tostring},
  {NULL, NULL}
};

static const luaL_Reg session_funcs[] = {
  {"new", core_new},
  {NULL, NULL}
};

/* registers the class and core.new in the module at the top of the stack */
int session_open(lua_State *L) {
  ibkr_createmeta(L, SESSION_MT, session_meth, session_metameth);
  luaL_setfuncs(L, session_funcs, 0);
  return 0;
}
