/*
** handle.c -- one exchange's libcurl easy handle: the session's template
** (options every exchange shares), the pool it is duplicated into, the
** options each exchange sets, the write and header callbacks that fill the
** exchange (they touch nothing else: libcurl is on the C stack), and the
** facts read when it ended, so that a result never needs the handle.
** Called by: lib/transfer.c, lib/lane.c.
** Calls: lib/conn.c, lib/buf.c.
** Lua-free, like every file in src/lib/.
*/
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "conn.h"
#include "handle.h"

/*
** The write callback runs with libcurl on the C stack: it only touches the
** xfer's buffer. Refusing data (returning 0) makes curl fail with
** CURLE_WRITE_ERROR, which the result turns into kind "too_large".
*/
static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  size_t len = size * nmemb;
  if (x->body.n + len > x->max_body || !buf_add(&x->body, data, len)) {
    x->overflow = 1;
    return 0;
  }
  return len;
}

/* Keeps the final response's header block (the caller's meta.headers) and
** tracks whether it ended (its empty line): libcurl reports success for a
** response cut off inside it. A new status line (after a 1xx, or a proxy's
** CONNECT answer) starts a block. Out of memory fails the exchange. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  xfer *x = ud;
  size_t len = size * nmemb;
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) x->hdr_done = 0, x->hdr.n = 0;
  else if ((len == 2 && data[0] == '\r' && data[1] == '\n') || (len == 1 && data[0] == '\n'))
    x->hdr_done = 1;
  return buf_add(&x->hdr, data, len) ? len : 0;
}

/* A session's template: options every exchange shares. The session adds
** its own (TLS, proxy, timeouts, user agent) before the first exchange.
** NULL, with the reason in err, when libcurl refuses one. */
CURL *handle_template(char *err, size_t errlen) {
  CURL *e = curl_easy_init();
  CURLcode c = e ? CURLE_OK : CURLE_OUT_OF_MEMORY;
#define SET(opt, val) if (c == CURLE_OK) c = curl_easy_setopt(e, opt, val)
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_FOLLOWLOCATION, 0L);
  SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
  SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  SET(CURLOPT_ACCEPT_ENCODING, "");
  SET(CURLOPT_WRITEFUNCTION, on_write);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_TCP_KEEPALIVE, 1L);
  SET(CURLOPT_PATH_AS_IS, 1L);                 /* wire.c refused dot segments: send as given */
#undef SET
  if (c == CURLE_OK && !conn_watch(e)) c = CURLE_UNKNOWN_OPTION;
  if (c != CURLE_OK) {
    snprintf(err, errlen, "libcurl refused an option: %s", curl_easy_strerror(c));
    curl_easy_cleanup(e);
    return NULL;
  }
  return e;
}

/* x gets an easy handle of h: a pooled one, or a copy of the template;
** 0 when out of memory */
int handle_take(xfer *x, xhome *h) {
  x->easy = h->npool ? h->pool[--h->npool] : curl_easy_duphandle(h->tmpl);
  return x->easy != NULL;
}

static int is(const callspec *cs, const char *m) {
  size_t n = strlen(m);
  return cs->mlen == n && memcmp(cs->method, m, n) == 0;
}

/* the options of one exchange; every one is set each time, since a pooled
** handle keeps what the previous exchange set. Returns the first option
** libcurl refused (out of memory), or CURLE_OK */
CURLcode handle_set(xfer *x, const callspec *cs, const char *url, struct curl_slist *hl, long timeout_ms) {
  CURL *e = x->easy;
  CURLcode c = CURLE_OK;
  long fresh;
  x->head = is(cs, "HEAD");
#define SET(opt, val) if (c == CURLE_OK) c = curl_easy_setopt(e, opt, val)
  SET(CURLOPT_URL, url);
  /* the URL parsed once by the session (x->uh), or NULL: libcurl parses url,
  ** and rebuilds it, on every exchange. Either way url is set too: libcurl
  ** keeps the text for what it shows (the effective URL) */
  SET(CURLOPT_CURLU, x->uh);
  SET(CURLOPT_NOBODY, 0L);
  if (cs->shape == HL_NOBODY) {
    SET(CURLOPT_HTTPGET, 1L);
    if (x->head) SET(CURLOPT_NOBODY, 1L);
  } else {
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_POSTFIELDS, x->post ? x->post : "");
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->postlen);
  }
  SET(CURLOPT_CUSTOMREQUEST, (is(cs, "GET") || is(cs, "POST") || x->head) ? NULL : cs->method);
  SET(CURLOPT_HTTPHEADER, hl);
  /* libcurl silently sends a request again when a reused connection turns
  ** out closed by the server before any answer byte, and the server may have
  ** acted on it. Only GET/HEAD/OPTIONS, and calls the caller marked
  ** repeatable, may take that chance: the rest go on a fresh connection,
  ** closed after the exchange (else every order would leave one more idle
  ** connection in the session's cache) */
  fresh = !(x->repeatable || is(cs, "GET") || x->head || is(cs, "OPTIONS"));
  x->fresh = (int)fresh;
  SET(CURLOPT_FRESH_CONNECT, fresh);
  SET(CURLOPT_FORBID_REUSE, fresh);
  SET(CURLOPT_TIMEOUT_MS, timeout_ms);
  SET(CURLOPT_PRIVATE, (void *)x);
  SET(CURLOPT_WRITEDATA, (void *)x);
  SET(CURLOPT_HEADERDATA, (void *)x);
  SET(CURLOPT_ERRORBUFFER, x->errbuf);
  SET(CURLOPT_OPENSOCKETDATA, (void *)&x->cw);
  SET(CURLOPT_CLOSESOCKETDATA, NULL);
#undef SET
  return c;
}

/* what the result needs, read while the transfer's owner still holds it */
void handle_gather(xfer *x, CURLcode code) {
  const char *loc = NULL;
  x->code = code;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
  curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &x->nconnects);
  /* the rest only where request.c reads it: a transfer error, an answer
  ** that is not a 2xx */
  if (code != CURLE_OK) {
    curl_easy_getinfo(x->easy, CURLINFO_HEADER_SIZE, &x->header_size);
    if (code == CURLE_PEER_FAILED_VERIFICATION)
      curl_easy_getinfo(x->easy, CURLINFO_SSL_VERIFYRESULT, &x->verify_result);
  }
  if (x->status < 200 || x->status >= 300) {
    curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &x->retry_after);
    curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_URL, &loc);
  }
  if (loc) x->location = buf_strndup(loc, strlen(loc));
  if (code == CURLE_OK && !x->hdr_done) {     /* closed inside the header block */
    x->code = CURLE_WEIRD_SERVER_REPLY;
    x->status = 0;
    snprintf(x->errbuf, sizeof x->errbuf, "connection closed inside the response headers");
  }
}

/*
** x, which found its kept connection gone, is to be sent again: what it
** gathered is forgotten, and libcurl's clock, which starts again, gets
** what is left of x's deadline. Returns 0 when nothing is (x is then
** done: a timeout).
*/
int handle_restart(xfer *x, double now) {
  double left = x->deadline - now;
  x->code = CURLE_OK;
  x->errbuf[0] = '\0';
  x->status = x->nconnects = x->header_size = 0;
  x->retry_after = 0;
  x->verify_result = 0;
  free(x->location);
  x->location = NULL;
  x->body.n = x->hdr.n = 0;
  x->overflow = x->hdr_done = 0;
  x->cw.refuse = x->cw.refused = 0;
  if (left <= 0.001) {
    x->code = CURLE_OPERATION_TIMEDOUT;
    snprintf(x->errbuf, sizeof x->errbuf, "Operation timed out: the kept connection was gone and "
             "no time was left to send the request again");
    x->state = X_DONE;
    return 0;
  }
  curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)ceil(left * 1000));
  return 1;
}

/*
** x's handle goes back to h's pool, or is freed. Only a handle whose
** exchange went cleanly over a kept connection is pooled: libcurl 7.88
** never resets a handle's count of resends on a new connection, and
** refuses the sixth one ("Connection died, tried 5 times"); a resend always
** makes a new connection. h NULL: the session is gone.
*/
void handle_give(xfer *x, xhome *h) {
  if (x->easy == NULL) return;
  if (h && h->npool < XPOOL_MAX && x->state == X_DONE && x->code == CURLE_OK && x->nconnects == 0)
    h->pool[h->npool++] = x->easy;
  else
    curl_easy_cleanup(x->easy);
  x->easy = NULL;
}
