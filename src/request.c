/*
** request.c -- one HTTP exchange on a session's reused easy handle, driven
** through the session's multi handle (so the blocking and the non-blocking
** paths share one connection cache), and the conversion of its outcome into
** a Lua value or an error object.
*/
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "ibkr.h"

/* ---------------------------------------------------------------- buffers */

int ibuf_reserve(ibuf *b, size_t need) {
  if (need <= b->cap) return 1;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < need) cap *= 2;
  char *p = realloc(b->p, cap);
  if (p == NULL) return 0;
  b->p = p;
  b->cap = cap;
  return 1;
}

int ibuf_add(ibuf *b, const char *s, size_t len) {
  if (!ibuf_reserve(b, b->n + len + 1)) return 0;
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
  return 1;
}

void ibuf_free(ibuf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}

/*
** The write callback runs with libcurl on the C stack: it only touches the C
** buffer. Refusing data (returning 0) makes curl fail with CURLE_WRITE_ERROR,
** which the result code turns into kind "too_large".
*/
static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
  session *s = ud;
  size_t len = size * nmemb;
  if (s->body.n + len > s->max_body || !ibuf_add(&s->body, data, len)) {
    s->overflow = 1;
    return 0;
  }
  return len;
}

/* --------------------------------------------------------------- set-up */

/*
** Options that stay for the life of the session. Transfer-specific options
** (URL, method, body, headers) are set by xfer_begin.
*/
int xfer_setup(session *s, char *err, size_t errlen) {
  CURL *e = s->easy;
  CURLcode c = CURLE_OK;
#define SET(opt, val) if (c == CURLE_OK) c = curl_easy_setopt(e, opt, val)
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_FOLLOWLOCATION, 0L);
  SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  SET(CURLOPT_ACCEPT_ENCODING, "");
  SET(CURLOPT_WRITEFUNCTION, on_write);
  SET(CURLOPT_WRITEDATA, (void *)s);
  SET(CURLOPT_ERRORBUFFER, s->errbuf);
  SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s->max_body);
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
#undef SET
  if (c != CURLE_OK) {
    snprintf(err, errlen, "libcurl refused an option: %s", curl_easy_strerror(c));
    return 0;
  }
  return 1;
}

/* ---------------------------------------------------------------- headers */

static int has_header(char **list, int n, const char *name) {
  size_t len = strlen(name);
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

/*
** Build the header list for one request shape. Per-call headers (extra)
** win over the session's headers, which win over the built-in Accept and
** Content-Type. A body-less POST must not carry the form Content-Type that
** libcurl would add by itself; "Content-Type:" removes it. "Expect:" stops
** libcurl from waiting for a 100-continue on larger JSON bodies.
*/
static struct curl_slist *build_list(session *s, int shape, char **extra, int nextra) {
  struct curl_slist *l = NULL;
  int ok = 1;
  int user_ct = has_header(s->uh, s->nuh, "Content-Type") || has_header(extra, nextra, "Content-Type");
  if (!has_header(s->uh, s->nuh, "Accept") && !has_header(extra, nextra, "Accept"))
    l = append(l, "Accept: application/json", &ok);
  for (int i = 0; i < s->nuh; i++) {
    const char *colon = strchr(s->uh[i], ':');
    char name[256];
    size_t len = (size_t)(colon - s->uh[i]);
    if (len >= sizeof(name)) len = sizeof(name) - 1;
    memcpy(name, s->uh[i], len);
    name[len] = '\0';
    if (!has_header(extra, nextra, name)) l = append(l, s->uh[i], &ok);
  }
  for (int i = 0; i < nextra; i++) l = append(l, extra[i], &ok);
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

void xfer_build_headers(lua_State *L, session *s) {
  for (int i = 0; i < HL_COUNT; i++) {
    s->hl[i] = build_list(s, i, NULL, 0);
    if (s->hl[i] == NULL) luaL_error(L, "out of memory");
  }
}

/* ------------------------------------------------------------ the exchange */

static int unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '_' || c == '.' || c == '~';
}

static void url_add(lua_State *L, ibuf *b, const char *p, size_t n) {
  if (!ibuf_add(b, p, n)) luaL_error(L, "out of memory");
}

static void url_add_escaped(lua_State *L, ibuf *b, const char *p, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    char esc[3];
    if (unreserved(c)) {
      url_add(L, b, (const char *)&c, 1);
    } else {
      esc[0] = '%';
      esc[1] = hex[c >> 4];
      esc[2] = hex[c & 15];
      url_add(L, b, esc, 3);
    }
  }
}

static int cmp_keys(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* append "k=v" for the value at the top of the stack (popped) */
static void add_pair(lua_State *L, ibuf *b, const char *k, int *first) {
  size_t vlen;
  const char *v;
  char num[IBKR_NUMTEXT];
  switch (lua_type(L, -1)) {
    case LUA_TBOOLEAN: v = lua_toboolean(L, -1) ? "true" : "false"; vlen = strlen(v); break;
    case LUA_TSTRING: v = lua_tolstring(L, -1, &vlen); break;
    case LUA_TNUMBER:                                 /* exact, as in bodies (json.c) */
      if ((vlen = ibkr_number_text(L, -1, num)) == 0)
        luaL_error(L, "query value '%s' is NaN or infinite", k);
      v = num;
      break;
    default: luaL_error(L, "query values must be strings, numbers, booleans or arrays of them");
             return;
  }
  url_add(L, b, *first ? "" : "&", *first ? 0 : 1);
  *first = 0;
  url_add_escaped(L, b, k, strlen(k));
  url_add(L, b, "=", 1);
  url_add_escaped(L, b, v, vlen);
  lua_pop(L, 1);
}

/*
** Append the URL-encoded query of table q to b: keys sorted so a URL is
** reproducible, array values repeated as k=v1&k=v2. Raises on bad types;
** called before any transfer state changes.
*/
static void add_query(lua_State *L, ibuf *b, int q) {
  int n = 0, i, first = 1;
  const char **keys;
  lua_pushnil(L);
  while (lua_next(L, q)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "query keys must be strings");
    n++;
    lua_pop(L, 1);
  }
  if (n == 0) return;
  keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)n, 0);   /* ..., keys */
  i = 0;
  lua_pushnil(L);
  while (lua_next(L, q)) {
    keys[i++] = lua_tostring(L, -2);    /* anchored by q */
    lua_pop(L, 1);
  }
  qsort(keys, (size_t)n, sizeof(char *), cmp_keys);
  for (i = 0; i < n; i++) {
    lua_getfield(L, q, keys[i]);                      /* ..., keys, v */
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_Integer cnt = luaL_len(L, -1);
      for (lua_Integer j = 1; j <= cnt; j++) {
        lua_geti(L, -1, j);
        add_pair(L, b, keys[i], &first);
      }
      lua_pop(L, 1);
    } else {
      add_pair(L, b, keys[i], &first);
    }
  }
  lua_pop(L, 1);                                      /* keys */
}

static void check_path(lua_State *L, int idx) {
  size_t n;
  const char *p = lua_tolstring(L, idx, &n);
  if (n == 0 || p[0] != '/') luaL_argerror(L, idx, "path must start with '/'");
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c <= 0x20 || c == 0x7f) luaL_argerror(L, idx, "path contains a control character or space");
  }
}

/* check every Name = value of the table at t (raising on the first bad
** one); returns how many there are */
int ibkr_check_headers(lua_State *L, int t) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    size_t nl, vl;
    const char *name, *val;
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "headers must map strings to strings");
    name = lua_tolstring(L, -2, &nl);
    val = lua_tolstring(L, -1, &vl);
    ibkr_check_header(L, name, nl, val, vl);
    n++;
    lua_pop(L, 1);
  }
  return n;
}

/*
** Per-call headers: turn opts.headers into "Name: value" strings kept on the
** stack in a table (anchors) and fill an array of pointers to them.
*/
static int collect_headers(lua_State *L, int h, char ***out) {
  int n = 0;
  char **arr;
  ibkr_check_headers(L, h);
  lua_newtable(L);                               /* anchors */
  lua_pushnil(L);
  while (lua_next(L, h)) {                       /* k, v: checked strings */
    lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
    lua_rawseti(L, -4, ++n);
    lua_pop(L, 1);
  }
  arr = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n ? n : 1), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -2, i + 1);
    arr[i] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  *out = arr;
  return n;                                      /* anchors, arr left on the stack */
}

/*
** Begin an exchange: validate everything that can raise first, then set the
** transfer options and attach the easy handle to the multi. On return the
** body (if any) is at the top of the stack and must stay anchored by the
** caller until the exchange is finished. Pushes exactly one value (the body
** string or nil).
*/
void xfer_begin(lua_State *L, session *s, const char *method, int pathidx, int optsidx) {
  CURL *e = s->easy;
  const char *body = NULL;
  size_t bodylen = 0, pathlen;
  const char *path;
  int has_body = 0, q = 0, h = 0, nextra = 0, shape;
  char **extra = NULL;
  int top;

  check_path(L, pathidx);
  path = lua_tolstring(L, pathidx, &pathlen);
  if (optsidx) {
    lua_getfield(L, optsidx, "query");
    lua_getfield(L, optsidx, "headers");
    lua_getfield(L, optsidx, "body");
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushnil(L);
  }
  top = lua_gettop(L);                          /* query, headers, body */
  switch (lua_type(L, top)) {
    case LUA_TNIL: break;
    case LUA_TSTRING: has_body = 1; break;
    case LUA_TTABLE:
      ibkr_encode(L, top);
      lua_replace(L, top);
      has_body = 1;
      break;
    default: luaL_error(L, "body must be a table or a string");
  }
  if (has_body) body = lua_tolstring(L, top, &bodylen);
  if (lua_type(L, top - 2) == LUA_TTABLE) q = top - 2;
  else if (!lua_isnil(L, top - 2)) luaL_error(L, "query must be a table");
  if (lua_type(L, top - 1) == LUA_TTABLE) h = top - 1;
  else if (!lua_isnil(L, top - 1)) luaL_error(L, "headers must be a table");

  /* URL = base .. path [.. "?" .. query], into the session's reused buffer */
  s->url.n = 0;
  url_add(L, &s->url, s->base, s->baselen);
  url_add(L, &s->url, path, pathlen);
  if (q) {
    size_t mark = s->url.n;
    url_add(L, &s->url, memchr(path, '?', pathlen) ? "&" : "?", 1);
    add_query(L, &s->url, q);
    if (s->url.n == mark + 1) s->url.p[s->url.n = mark] = '\0';   /* empty query */
  }

  if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0)
    shape = has_body ? HL_JSON : HL_POST0;
  else
    shape = has_body ? HL_JSON : HL_NOBODY;
  if (h) nextra = collect_headers(L, h, &extra);  /* ..., anchors, arr */
  s->callh = NULL;
  if (nextra) {
    s->callh = build_list(s, shape, extra, nextra);
    if (s->callh == NULL) luaL_error(L, "out of memory");
  }
  /* nothing below raises: the transfer state is set */
  s->body.n = 0;
  s->overflow = 0;
  s->errbuf[0] = '\0';
  s->head = strcmp(method, "HEAD") == 0;
  /* Options persist on the easy handle: a session repeating the same call
  ** (the keep-alive's tickle) skips the setopts that would not change. */
  if (s->url.n != s->lasturl.n || memcmp(s->url.p, s->lasturl.p, s->url.n) != 0) {
    ibuf t = s->lasturl;
    curl_easy_setopt(e, CURLOPT_URL, s->url.p);
    s->lasturl = s->url;
    s->url = t;
  }
  {
    char req[sizeof s->lastreq];
    size_t ml = strlen(method);                   /* <= 15, checked by the caller */
    memcpy(req, method, ml);
    req[ml] = (char)('0' + shape);
    req[ml + 1] = '\0';
    if (has_body || s->callh || strcmp(req, s->lastreq) != 0) {
      curl_easy_setopt(e, CURLOPT_NOBODY, (long)s->head);
      if (shape == HL_NOBODY) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        if (s->head) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
      } else {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, has_body ? body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bodylen);
      }
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST,
                       (strcmp(method, "GET") == 0 || strcmp(method, "POST") == 0 || s->head)
                           ? NULL : method);
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->callh ? s->callh : s->hl[shape]);
      /* libcurl silently sends a request again when a reused connection
      ** turns out dead before any answer byte. For a POST/PATCH with a body
      ** (an order) that would be a duplicate, so those go out on a fresh
      ** connection; the body-less session calls keep the pooled one. */
      curl_easy_setopt(e, CURLOPT_FRESH_CONNECT,
                       (long)(has_body && (strcmp(method, "POST") == 0 || strcmp(method, "PATCH") == 0)));
      /* a body pointer or a per-call header list is this call's only */
      if (has_body || s->callh) s->lastreq[0] = '\0';
      else memcpy(s->lastreq, req, sizeof req);
    }
  }
  s->inuse = 1;
  s->finished = 0;
  s->code = CURLE_OK;
  if (curl_multi_add_handle(s->multi, e) != CURLM_OK) {
    s->finished = 1;
    s->code = CURLE_FAILED_INIT;
  } else {
    s->active = 1;
  }
  s->exchanges++;
  if (nextra) lua_pop(L, 2);                    /* anchors, arr */
  lua_pushvalue(L, top);                        /* the body (or nil) */
  lua_replace(L, top - 2);
  lua_pop(L, 2);                                /* leaves body at the old query slot */
}

/* read the finished transfer's message, if any */
static void collect(session *s) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(s->multi, &left)) != NULL) {
    if (m->msg == CURLMSG_DONE && m->easy_handle == s->easy) {
      s->finished = 1;
      s->code = m->data.result;
    }
  }
}

/* ------------------------------------------------------------ the worker */

/*
** A non-blocking request must never make its caller wait, but one call of
** curl_multi_perform can take milliseconds of CPU: a TLS handshake under
** OpenSSL 3 (new SSL_CTX, certificate decoding, signature check) costs 1-3
** ms, loading a CA bundle more. So the transfer of a request runs on a
** worker thread that owns the easy and multi handles until it is joined;
** step() only looks at a flag. The worker never touches the lua_State, and
** the caller reads what the worker wrote only after pthread_join.
*/
int xfer_sync_init(session *s) {
  pthread_condattr_t ca;
  if (pthread_mutex_init(&s->mu, NULL) != 0) return 0;
  if (pthread_condattr_init(&ca) != 0) {
    pthread_mutex_destroy(&s->mu);
    return 0;
  }
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (pthread_cond_init(&s->cv, &ca) != 0) {
    pthread_condattr_destroy(&ca);
    pthread_mutex_destroy(&s->mu);
    return 0;
  }
  pthread_condattr_destroy(&ca);
  s->sync_init = 1;
  return 1;
}

void xfer_sync_free(session *s) {
  if (!s->sync_init) return;
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  s->sync_init = 0;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int flag(session *s, int *f) {
  int v;
  pthread_mutex_lock(&s->mu);
  v = *f;
  pthread_mutex_unlock(&s->mu);
  return v;
}

static void *worker(void *ud) {
  session *s = ud;
  for (;;) {
    int running;
    if (curl_multi_perform(s->multi, &running) != CURLM_OK) {
      s->finished = 1;
      s->code = CURLE_OUT_OF_MEMORY;
    } else {
      collect(s);
    }
    if (s->finished || flag(s, &s->wabort)) break;
    curl_multi_poll(s->multi, NULL, 0, 1000, NULL);
    if (flag(s, &s->wabort)) break;
  }
  pthread_mutex_lock(&s->mu);
  s->wdone = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/*
** Hand the begun exchange to a worker thread. The worker blocks every
** signal, so the host's handlers keep running on the host's threads.
** Returns 0 when no thread could be made: the caller then steps in place.
*/
int xfer_spawn(session *s) {
  sigset_t all, old;
  int rc;
  if (!s->sync_init || s->finished) return 0;
  s->wdone = s->wabort = 0;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&s->worker, NULL, worker, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) return 0;
  s->threaded = 1;
  s->wnext = 0.0002;
  s->wdue = 0;
  return 1;
}

static void join(session *s) {
  pthread_join(s->worker, NULL);
  s->threaded = 0;
}

/* stop the worker now (close, GC, abort) and wait for it: at most one pass
** of curl_multi_perform, since curl_multi_wakeup ends its poll at once */
static void abort_worker(session *s) {
  if (!s->threaded) return;
  pthread_mutex_lock(&s->mu);
  s->wabort = 1;
  pthread_mutex_unlock(&s->mu);
  curl_multi_wakeup(s->multi);
  join(s);
}

/*
** One non-blocking step. Returns 1 when the transfer is finished; otherwise
** sets *wait to the seconds after which a new step is worth making. With a
** worker that is a cheap flag check; without one (no thread could be made)
** the step runs curl itself, its wait capped so that socket activity, which
** curl_multi_timeout cannot see, is noticed soon.
*/
int xfer_step(session *s, double *wait) {
  int running;
  long ms = -1;
  if (s->threaded) {
    if (!flag(s, &s->wdone)) {
      /* a loopback answer takes ~0.1 ms, a slow gateway seconds: ask to be
      ** stepped soon at first, then back off, so latency stays low without
      ** making a slow request cost thousands of resumes. A host that steps
      ** again before the wait it was given (a tight loop) would starve the
      ** worker on a single CPU (4 ms a call in the benchmark): give the CPU
      ** away then. A host that waits as asked is never slowed down by it. */
      double t = now();
      if (t < s->wdue) sched_yield();
      *wait = s->wnext;
      s->wdue = t + s->wnext;
      if (s->wnext < 0.005) s->wnext *= 2;
      return 0;
    }
    join(s);
    return 1;
  }
  if (s->finished) return 1;
  if (curl_multi_perform(s->multi, &running) != CURLM_OK) {
    s->finished = 1;
    s->code = CURLE_OUT_OF_MEMORY;
    return 1;
  }
  collect(s);
  if (s->finished) return 1;
  curl_multi_timeout(s->multi, &ms);
  if (ms < 0 || ms > 10) ms = 10;
  *wait = (double)ms / 1000.0;
  return 0;
}

/*
** Block until finished or `timeout` seconds passed (timeout < 0: no limit).
** In place, curl_multi_poll sleeps on the transfer's sockets, as
** curl_easy_perform does; with a worker, wait for its signal.
*/
int xfer_wait(session *s, double timeout) {
  double end;
  if (!(timeout <= 1e9)) timeout = -1;      /* huge or NaN: no limit (and no overflowing cast) */
  end = timeout >= 0 ? now() + timeout : 0;
  if (s->threaded) {
    struct timespec ts;
    pthread_mutex_lock(&s->mu);
    if (timeout >= 0) {
      ts.tv_sec = (time_t)end;
      ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
    }
    while (!s->wdone) {
      if (timeout < 0) pthread_cond_wait(&s->cv, &s->mu);
      else if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) != 0) break;
    }
    int done = s->wdone;
    pthread_mutex_unlock(&s->mu);
    if (!done) return 0;
    join(s);
    return 1;
  }
  for (;;) {
    double w;
    int ms = 1000;
    if (xfer_step(s, &w)) return 1;
    if (timeout >= 0) {
      double left = end - now();
      if (left <= 0) return 0;
      if (left * 1000 < ms) ms = (int)(left * 1000) + 1;
    }
    curl_multi_poll(s->multi, NULL, 0, ms, NULL);
  }
}

/* detach the easy handle from the multi; keeps the connection in the cache */
void xfer_finish(session *s) {
  abort_worker(s);
  if (s->active) {
    curl_multi_remove_handle(s->multi, s->easy);
    s->active = 0;
  }
  if (s->callh) {
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->hl[HL_NOBODY]);
    curl_slist_free_all(s->callh);
    s->callh = NULL;
  }
}

/* end the exchange: the session is free for the next one */
void xfer_release(session *s) {
  xfer_finish(s);
  s->inuse = 0;
  s->owner = NULL;
  /* a huge response should not pin its memory for the session's life */
  if (s->body.cap > 256 * 1024) {
    ibuf_free(&s->body);
  }
}

/* ------------------------------------------------------------- outcomes */

static const char *kind_of(CURLcode c, int overflow) {
  switch (c) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
      return "connect";
    case CURLE_OPERATION_TIMEDOUT:
      return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_USE_SSL_FAILED:
      return "tls";
    case CURLE_FILESIZE_EXCEEDED:
      return "too_large";
    case CURLE_WRITE_ERROR:
      return overflow ? "too_large" : "protocol";
    default:
      return "protocol";
  }
}

/* the body cut for error objects, plus the decoded body when it is JSON */
static void add_body(lua_State *L, session *s) {
  size_t n = s->body.n;
  if (n == 0) return;
  lua_pushlstring(L, s->body.p, n < IBKR_BODY_CUT ? n : IBKR_BODY_CUT);
  lua_setfield(L, -2, "body");
  if (ibkr_decode(L, s->body.p, n)) lua_setfield(L, -2, "data");
  else lua_pop(L, 1);
}

/*
** Turn the finished exchange into Lua values: result, nil, status on success;
** nil, err otherwise. The session stays reserved until the caller releases
** it, so the body buffer cannot be overwritten underneath.
*/
int xfer_push_result(lua_State *L, session *s, int methodidx, int pathidx) {
  long status = 0;
  char msg[CURL_ERROR_SIZE + 64];
  curl_off_t ra = 0;
  long nconn = 0;
  curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(s->easy, CURLINFO_NUM_CONNECTS, &nconn);
  s->connects += nconn;
  if (s->code != CURLE_OK) {
    const char *kind = kind_of(s->code, s->overflow);
    if (strcmp(kind, "too_large") == 0)
      snprintf(msg, sizeof msg, "response body larger than max_body (%lu bytes)",
               (unsigned long)s->max_body);
    else
      snprintf(msg, sizeof msg, "%s", s->errbuf[0] ? s->errbuf : curl_easy_strerror(s->code));
    lua_pushnil(L);
    ibkr_push_error(L, kind, msg, methodidx, pathidx);
    ibkr_seti(L, "curl_code", (lua_Integer)s->code);
    if (status > 0) ibkr_seti(L, "status", status);
    return 2;
  }
  if (status >= 200 && status < 300) {
    if (s->body.n == 0 || s->head) {
      lua_newtable(L);
    } else if (!ibkr_decode(L, s->body.p, s->body.n)) {
      snprintf(msg, sizeof msg, "response is not JSON: %s", lua_tostring(L, -1));
      lua_pop(L, 1);
      lua_pushnil(L);
      ibkr_push_error(L, "json", msg, methodidx, pathidx);
      ibkr_seti(L, "status", status);
      add_body(L, s);
      return 2;
    }
    lua_pushnil(L);
    lua_pushinteger(L, status);
    return 3;
  }
  /* any other status, including 3xx: redirects are never followed */
  lua_pushnil(L);
  ibkr_push_error(L, "http", NULL, methodidx, pathidx);
  ibkr_seti(L, "status", status);
  curl_easy_getinfo(s->easy, CURLINFO_RETRY_AFTER, &ra);
  if (ra > 0) ibkr_seti(L, "retry_after", (lua_Integer)ra);
  add_body(L, s);
  {
    const char *loc = NULL;
    curl_easy_getinfo(s->easy, CURLINFO_REDIRECT_URL, &loc);
    if (loc) ibkr_sets(L, "location", loc);
  }
  ibkr_error_describe(L, -1);                   /* the message, from what the answer holds */
  return 2;
}
