/*
** wsconn.c -- one websocket connection, client side (RFC 6455), no Lua.
**
** Parts: libcurl keeps the connection (CURLOPT_CONNECT_ONLY on a duplicate
** of the session's handle template: TCP, proxy tunnel, TLS and certificate
** checks, loopback pinning -- the session's rules, one copy). It is made on
** the engine thread, in a far lane of the connection's own
** (transfer_connect), so no DNS, connect or TLS handshake runs on the
** caller's thread; then the handle stays in that lane's multi handle and
** this file talks through it with curl_easy_send/curl_easy_recv, never
** blocking. libwslay (Debian's libwslay-dev) frames RFC 6455 without doing
** I/O. The upgrade handshake is written here: a GET with Upgrade, a
** Sec-WebSocket-Key of 16 bytes from OpenSSL's CSPRNG, a 101 answer whose
** Sec-WebSocket-Accept must be base64(SHA-1(key + GUID)). Client frames are
** masked with keys from the same CSPRNG (wslay's genmask callback).
**
** Bounds: one step reads at most WS_STEP_BYTES (then it says "more"), reads
** in WS_READ_SIZE pieces (a whole TLS record: nothing decrypted is left in
** OpenSSL's buffer where a poll(2) would not see it), never reads while
** WS_INBOX_MAX of received messages wait to be read, stops reading once
** WS_STEP_CONTROLS pings and pongs came in a step (each ping's pong is a
** send of its own: a ping flood keeps each step short), refuses a message
** longer than max_message as soon as a frame header announces it (close
** 1009, before anything is allocated). A peer that does not read what it
** is sent (pongs of a ping flood) is dropped once 4 * WS_INBOX_MAX plus
** max_message wait to be sent.
**
** Closing: the close frame goes out when the socket takes it, and the
** connection is handed to the engine thread, which waits up to WS_LINGER
** for the gateway to end it (its echo of the close frame, then its end of
** the TCP connection, RFC 6455 7.1.1) and frees it there: never a wait on
** the caller's thread, nor the 1-2 ms a verified TLS connection's CA store
** takes to free. The duplicate handed to waiters becomes an always-readable
** descriptor, so a waiter wakes.
** Called by: websocket.c.
** Calls: lib/transfer.c, lib/engine.c, lib/conn.c, lib/kind.c, lib/buf.c.
** Lua-free, like every file in src/lib/.
*/
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "clock.h"
#include "conn.h"
#include "engine.h"
#include "kind.h"
#include "transfer.h"
#include "wsconn.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

void wsconn_init(wsconn *c) {
  memset(c, 0, sizeof *c);
  c->state = WS_CLOSED;
  c->sock = CURL_SOCKET_BAD;
  c->pfd = -1;
  c->kind = -1;
  transfer_init(&c->x);
  transfer_home_init(&c->home);
}

static int forked(const wsconn *c) {
  return c->home.gen != engine_generation();
}

/* the connection goes (to the engine thread, which ends it: see above);
** what was received stays readable. In a forked child the parent's
** connection is left alone. */
static void drop(wsconn *c) {
  int fk = forked(c);
  if (c->pfd >= 0 && engine_ready_fd() >= 0) conn_replace(c->pfd, engine_ready_fd());   /* a waiter wakes */
  if (c->ws) wslay_event_context_free(c->ws);
  c->ws = NULL;
  if (fk) c->x.easy = c->easy = NULL;          /* the parent's handle: never touched */
  else if (c->easy == NULL && c->x.easy && transfer_done(&c->x) && c->x.code == CURLE_OK)
    c->easy = c->x.easy, c->x.easy = NULL;     /* connected, not yet taken: the connection is ours */
  transfer_close(&c->x);                       /* stops a connect under way */
  transfer_connect_close(&c->home, c->easy, WS_LINGER, fk);
  c->easy = NULL;
  c->sock = CURL_SOCKET_BAD;
  c->state = WS_CLOSED;
}

/* notes why c closes (the first reason given wins); safe inside wslay's
** callbacks, which must never see c dropped under them */
static void vnote(wsconn *c, int kind, const char *fmt, va_list ap) {
  if (c->kind >= 0) return;
  c->kind = kind;
  vsnprintf(c->why, sizeof c->why, fmt, ap);
}

static void note(wsconn *c, int kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(wsconn *c, int kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vnote(c, kind, fmt, ap);
  va_end(ap);
}

/* closes c for the reason noted, or this one */
static void give_up(wsconn *c, int kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void give_up(wsconn *c, int kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vnote(c, kind, fmt, ap);
  va_end(ap);
  drop(c);
}

/* ------------------------------------------------------------ the handshake */

static int base64(const unsigned char *in, int n, char *out, size_t outlen) {
  if ((size_t)(4 * ((n + 2) / 3) + 1) > outlen) return 0;
  EVP_EncodeBlock((unsigned char *)out, in, n);
  return 1;
}

/* a fresh Sec-WebSocket-Key in key (25 bytes) and the accept it implies */
static int make_key(wsconn *c, char *key) {
  unsigned char raw[16], md[EVP_MAX_MD_SIZE];
  char cat[64];
  unsigned mdlen = 0;
  if (RAND_bytes(raw, sizeof raw) != 1 || !base64(raw, sizeof raw, key, 25)) return 0;
  snprintf(cat, sizeof cat, "%s%s", key, WS_GUID);
  if (EVP_Digest(cat, strlen(cat), md, &mdlen, EVP_sha1(), NULL) != 1) return 0;
  return base64(md, (int)mdlen, c->accept, sizeof c->accept);
}

/* the request: the caller's head (request line, Host, its headers) and ours */
static int make_request(wsconn *c, const char *head) {
  static const char fmt[] = "%sUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n";
  char key[25];
  size_t n;
  if (!make_key(c, key)) return 0;
  n = strlen(head) + sizeof fmt + sizeof key;
  if ((c->req = malloc(n)) == NULL) return 0;
  c->reqlen = (size_t)snprintf(c->req, n, fmt, head, key);
  return 1;
}

/* a header's value in the answer's header block (after the status line),
** trimmed, or NULL; *count: how many times the header appears */
static const char *header(const char *h, const char *name, size_t *len, int *count) {
  size_t nl = strlen(name);
  const char *found = NULL;
  *count = 0;
  for (const char *p = strstr(h, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
    const char *line = p + 2, *end = strstr(line, "\r\n"), *v;
    if (end == NULL) break;
    if ((size_t)(end - line) <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':') continue;
    v = line + nl + 1;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    found = v;
    *len = (size_t)(end - v);
    ++*count;
  }
  return found;
}

/* whether a comma-separated header value holds token tok (any case) */
static int has_token(const char *v, size_t len, const char *tok) {
  size_t tl = strlen(tok);
  const char *end = v + len;
  while (v < end) {
    const char *comma = memchr(v, ',', (size_t)(end - v)), *e = comma ? comma : end;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
    if ((size_t)(e - v) == tl && strncasecmp(v, tok, tl) == 0) return 1;
    v = comma ? comma + 1 : end;
  }
  return 0;
}

static int on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *ud);
static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud);
static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud);
static int on_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud);

static void on_msg_void(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *ud) {
  (void)on_msg(ctx, a, ud);
}

static const struct wslay_event_callbacks callbacks = {
  on_recv, on_send, on_genmask, NULL, NULL, NULL, on_msg_void
};

/* the answer's head is complete in c->head: 101 with the right accept, or
** c is closed with the reason. Returns whether it is open. */
static int check_answer(wsconn *c) {
  const char *h = c->head.p, *v;
  size_t len = 0;
  int n, major, minor, status;
  if (sscanf(h, "HTTP/%d.%d %3d", &major, &minor, &status) != 3 || status < 100 || status > 999)
    return give_up(c, KIND_PROTOCOL, "the upgrade answer is not HTTP: %.40s", h), 0;
  if (status != 101) {
    size_t left = c->inlen - c->inoff, cut = left < c->body_cut ? left : c->body_cut;
    c->status = status;
    if (cut && (c->body = malloc(cut)) != NULL) memcpy(c->body, c->in + c->inoff, c->bodylen = cut);
    return give_up(c, KIND_HTTP, "the gateway answered %d to the websocket upgrade, not 101 Switching Protocols",
                status), 0;
  }
  v = header(h, "Upgrade", &len, &n);
  if (n != 1 || len != 9 || strncasecmp(v, "websocket", 9) != 0)
    return give_up(c, KIND_PROTOCOL, "the 101 answer does not say Upgrade: websocket"), 0;
  v = header(h, "Connection", &len, &n);
  if (n < 1 || !has_token(v, len, "upgrade"))
    return give_up(c, KIND_PROTOCOL, "the 101 answer does not say Connection: Upgrade"), 0;
  v = header(h, "Sec-WebSocket-Accept", &len, &n);
  if (n != 1 || len != strlen(c->accept) || memcmp(v, c->accept, len) != 0)
    return give_up(c, KIND_PROTOCOL, n ? "the 101 answer's Sec-WebSocket-Accept does not match the key sent"
                                  : "the 101 answer has no Sec-WebSocket-Accept"), 0;
  if ((v = header(h, "Sec-WebSocket-Extensions", &len, &n)) != NULL && len > 0)
    return give_up(c, KIND_PROTOCOL, "the 101 answer names an extension, none was offered"), 0;
  if ((v = header(h, "Sec-WebSocket-Protocol", &len, &n)) != NULL && len > 0)
    return give_up(c, KIND_PROTOCOL, "the 101 answer names a subprotocol, none was offered"), 0;
  if (wslay_event_context_client_init(&c->ws, &callbacks, c) != 0)
    return give_up(c, KIND_PROTOCOL, "out of memory"), 0;
  wslay_event_config_set_max_recv_msg_length(c->ws, c->max_message);
  c->opened = c->last_rx = clock_now();
  c->state = WS_OPEN;
  return 1;
}

/* the kind of a failed curl_easy_recv/curl_easy_send on the open
** connection: one cut under it (reset, broken pipe, nothing more) is a
** hang-up, as an end without a close frame is; else as for a transfer */
static int link_kind(CURLcode rc) {
  if (rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR || rc == CURLE_GOT_NOTHING) return KIND_HANGUP;
  return kind_of_code(rc, 0);
}

/* reads into c->in (empty) at most what is left of the step's budget;
** returns bytes read, 0 for "nothing now" (*eof set at the end of the
** stream), -1 after an error (noted; the caller drops c) */
static ssize_t read_some(wsconn *c, int *eof) {
  size_t n = 0;
  CURLcode rc;
  *eof = 0;
  if (c->budget == 0) return 0;
  c->x.errbuf[0] = '\0';
  rc = curl_easy_recv(c->easy, c->in, WS_READ_SIZE, &n);
  if (rc == CURLE_AGAIN) return 0;
  if (rc != CURLE_OK) {
    note(c, link_kind(rc), "the connection was cut without a websocket close (receiving: %s)",
         c->x.errbuf[0] ? c->x.errbuf : curl_easy_strerror(rc));
    return -1;
  }
  if (n == 0) {
    *eof = 1;
    return 0;
  }
  c->inoff = 0;
  c->inlen = n;
  c->budget = n < c->budget ? c->budget - n : 0;
  c->rx_bytes += (long long)n;
  c->last_rx = clock_now();
  return (ssize_t)n;
}

/* the upgrade request out, its answer's head in. Returns whether c is open. */
static int upgrade(wsconn *c) {
  while (c->reqoff < c->reqlen) {
    size_t n = 0;
    CURLcode rc = curl_easy_send(c->easy, c->req + c->reqoff, c->reqlen - c->reqoff, &n);
    c->want_write = rc == CURLE_AGAIN;
    if (rc == CURLE_AGAIN) return 0;
    if (rc != CURLE_OK)
      return give_up(c, link_kind(rc), "the connection was cut sending the upgrade: %s", curl_easy_strerror(rc)), 0;
    c->reqoff += n;
    c->tx_bytes += (long long)n;
  }
  for (;;) {
    int eof;
    size_t old = c->head.n;
    char *end;
    ssize_t got = read_some(c, &eof);
    if (got < 0) return drop(c), 0;
    if (eof) return give_up(c, KIND_PROTOCOL, old ? "the connection closed inside the upgrade answer"
                                            : "the connection closed without an answer to the upgrade"), 0;
    if (got == 0) return 0;
    if (!buf_add(&c->head, (const char *)c->in, (size_t)got) || !buf_add(&c->head, "", 1))
      return give_up(c, KIND_PROTOCOL, "out of memory"), 0;
    c->head.n--;                                /* kept NUL-terminated */
    end = strstr(c->head.p + (old > 3 ? old - 3 : 0), "\r\n\r\n");
    if (end != NULL) {
      size_t used = (size_t)(end + 4 - c->head.p);
      c->inoff = used - old;                    /* the rest of c->in: the first frames */
      c->head.n = used;
      c->head.p[used - 2] = '\0';               /* the block, each line ending in CRLF */
      return check_answer(c);
    }
    if (c->head.n > WS_HEAD_MAX)
      return give_up(c, KIND_PROTOCOL, "the upgrade answer's headers are longer than %d bytes", WS_HEAD_MAX), 0;
  }
}

/* ------------------------------------------------------------ wslay's callbacks */

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud) {
  wsconn *c = ud;
  size_t n;
  (void)flags;
  if (c->controls >= WS_STEP_CONTROLS) {        /* the rest next step (wslay's buffer is parsed) */
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (c->inoff == c->inlen) {
    int eof;
    ssize_t got = c->state == WS_OPEN ? read_some(c, &eof) : -1;
    if (got <= 0) {
      if (got == 0 && eof) note(c, KIND_HANGUP, "the connection closed without a websocket close");
      wslay_event_set_error(ctx, got == 0 && !eof ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
      return -1;
    }
  }
  if (len > WS_RECV_CHUNK) len = WS_RECV_CHUNK;  /* (parsed before the next call: controls counted) */
  n = c->inlen - c->inoff < len ? c->inlen - c->inoff : len;
  memcpy(buf, c->in + c->inoff, n);
  c->inoff += n;
  return (ssize_t)n;
}

static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud) {
  wsconn *c = ud;
  size_t n = 0;
  CURLcode rc;
  (void)flags;
  if (c->state != WS_OPEN) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  c->x.errbuf[0] = '\0';
  rc = curl_easy_send(c->easy, data, len, &n);
  c->want_write = rc == CURLE_AGAIN;
  if (rc == CURLE_AGAIN) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (rc != CURLE_OK) {
    note(c, link_kind(rc), "the connection was cut without a websocket close (sending: %s)",
         c->x.errbuf[0] ? c->x.errbuf : curl_easy_strerror(rc));
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  c->tx_bytes += (long long)n;
  return (ssize_t)n;
}

/* client frames are masked with unpredictable keys (RFC 6455 §5.3) */
static int on_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud) {
  (void)ud;
  if (RAND_bytes(buf, (int)len) == 1) return 0;
  wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
  return -1;
}

/* a whole message: data frames wait in the inbox; a close frame's code and
** reason are noted (wslay answers it, and pings, itself) */
static int on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a, void *ud) {
  wsconn *c = ud;
  wsmsg *m;
  (void)ctx;
  if (a->opcode == WSLAY_PING || a->opcode == WSLAY_PONG) c->controls++;
  if (a->opcode == WSLAY_CONNECTION_CLOSE) {
    size_t rl = a->msg_length > 2 ? a->msg_length - 2 : 0;
    c->close_code = a->status_code;
    if (a->msg_length == 1)                     /* (wslay takes it as "no code") */
      note(c, KIND_PROTOCOL, "the gateway sent a close frame with a 1-byte body (RFC 6455 5.5.1)");
    else if (a->status_code == 0)
      note(c, KIND_HANGUP, "the gateway closed the websocket (no code)");
    else
      note(c, KIND_HANGUP, "the gateway closed the websocket (code %d%s%.*s)", a->status_code,
           rl ? ": " : "", (int)(rl > 120 ? 120 : rl), rl ? (const char *)a->msg + 2 : "");
    return 0;
  }
  if (a->opcode != WSLAY_TEXT_FRAME && a->opcode != WSLAY_BINARY_FRAME) return 0;
  if ((m = malloc(sizeof *m + a->msg_length + 1)) == NULL) {
    note(c, KIND_PROTOCOL, "out of memory");
    return 0;
  }
  m->next = NULL;
  m->len = a->msg_length;
  m->binary = a->opcode == WSLAY_BINARY_FRAME;
  if (a->msg_length) memcpy(m->data, a->msg, a->msg_length);
  m->data[a->msg_length] = '\0';
  if (c->last) c->last->next = m;
  else c->first = m;
  c->last = m;
  c->inbox += a->msg_length;
  c->rx_msgs++;
  return 0;
}

/* ------------------------------------------------------------ open */

/* wslay stopped reading, or a callback noted a failure: c goes, after its
** close frame (an answer to the gateway's, or ours for what it sent), when
** the socket takes it. Why: what was noted (the gateway's close, the end of
** the stream, a receive error), else the close code wslay sent. */
static void wind_down(wsconn *c) {
  int noted = c->kind >= 0, sent;
  wslay_event_send(c->ws);
  if (noted) {
    drop(c);
    return;
  }
  c->kind = -1;                                 /* (a send that failed just now says less) */
  sent = wslay_event_get_close_sent(c->ws) ? wslay_event_get_status_code_sent(c->ws) : 0;
  c->close_code = sent;
  if (sent == WSLAY_CODE_MESSAGE_TOO_BIG)
    give_up(c, KIND_TOO_LARGE, "a websocket message longer than max_message (%lu bytes)",
         (unsigned long)c->max_message);
  else if (sent == WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA)
    give_up(c, KIND_PROTOCOL, "the gateway sent a text frame (or close reason) that is not UTF-8");
  else if (sent == WSLAY_CODE_PROTOCOL_ERROR)
    give_up(c, KIND_PROTOCOL, "the gateway broke the websocket protocol (RFC 6455): close 1002 sent");
  else
    give_up(c, KIND_PROTOCOL, "the gateway sent a malformed websocket frame (RFC 6455)");
}

/* frames in and out; returns whether there is more to do at once */
static int exchange(wsconn *c) {
  int rv = 0;
  size_t qmax = 4 * WS_INBOX_MAX + c->max_message, queued;
  if (c->inbox < WS_INBOX_MAX) rv = wslay_event_recv(c->ws);
  if (rv == WSLAY_ERR_NOMEM) note(c, KIND_PROTOCOL, "out of memory");
  if (rv != 0 || c->kind >= 0 || !wslay_event_get_read_enabled(c->ws)) return wind_down(c), 0;
  if (wslay_event_want_write(c->ws) && wslay_event_send(c->ws) != 0)
    return give_up(c, KIND_PROTOCOL, "sending failed"), 0;
  queued = wslay_event_get_queued_msg_length(c->ws);
  if (queued > qmax)
    return give_up(c, KIND_PROTOCOL, "the gateway does not read what is sent to it (%lu bytes waiting)",
                (unsigned long)queued), 0;
  return c->inoff < c->inlen || c->budget == 0 || c->first != NULL || c->controls >= WS_STEP_CONTROLS;
}

/* ------------------------------------------------------------ the interface */

/*
** Starts connecting: e (a duplicate of the session's template; c owns it
** from here, whatever happens) to o->url, with the session's localhost
** pins (copied: c may outlive the session), then the upgrade request made
** of o->head (request line, Host and the caller's headers, each line ending
** in CRLF) and the websocket headers. o->timeout_ms bounds the connect.
** Returns 0 when out of memory (c is closed, with the reason).
*/
int wsconn_start(wsconn *c, CURL *e, const wsopts *o) {
  int ok = 1;
  c->state = WS_CONNECTING;
  c->max_message = o->max_message;
  c->body_cut = o->body_cut;
  for (struct curl_slist *r = o->resolve; r && ok; r = r->next) {
    struct curl_slist *n = curl_slist_append(c->home.resolve, r->data);
    if (n) c->home.resolve = n;
    else ok = 0;
  }
  c->x.url = ok ? buf_strndup(o->url, strlen(o->url)) : NULL;
  c->in = malloc(WS_READ_SIZE);
  if (!c->x.url || !c->in || !make_request(c, o->head)) {
    curl_easy_cleanup(e);
    return give_up(c, KIND_PROTOCOL, "out of memory"), 0;
  }
  c->x.max_body = o->body_cut;                  /* a proxy's answer to CONNECT, if any */
  curl_easy_setopt(e, CURLOPT_URL, c->x.url);
  curl_easy_setopt(e, CURLOPT_RESOLVE, c->home.resolve);
  curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPPROXYTUNNEL, 1L);    /* through a proxy: a tunnel (CONNECT) */
  if (!transfer_connect(&c->x, &c->home, e, o->timeout_ms))
    return give_up(c, KIND_CONNECT, "%s", c->x.errbuf[0] ? c->x.errbuf : curl_easy_strerror(c->x.code)), 1;
  return 1;
}

/* whether the connect ended well: c then upgrades; else c is closed */
static int connected(wsconn *c) {
  if (!transfer_done(&c->x)) return 0;
  if (c->x.code != CURLE_OK)
    return give_up(c, kind_of_code(c->x.code, 0), "%s",
                c->x.errbuf[0] ? c->x.errbuf : curl_easy_strerror(c->x.code)), 0;
  /* the exchange is over: the handle (still in the lane, where its connection lives) is ours,
  ** the exchange's completion descriptor goes */
  c->easy = c->x.easy;
  c->x.easy = NULL;
  transfer_close(&c->x);
  if (curl_easy_getinfo(c->easy, CURLINFO_ACTIVESOCKET, &c->sock) != CURLE_OK || c->sock == CURL_SOCKET_BAD)
    return give_up(c, KIND_PROTOCOL, "the connection was lost as it was made"), 0;
  c->pfd = fcntl(c->sock, F_DUPFD_CLOEXEC, 0);
  c->state = WS_UPGRADING;
  return 1;
}

/*
** Does what can be done now without waiting: the connect's end, the
** upgrade, frames in (at most WS_STEP_BYTES) and out. Returns whether there
** is more to do at once (bytes read but not framed, the step's budget
** spent, messages waiting to be read): then step again without waiting.
*/
int wsconn_step(wsconn *c) {
  if (c->state == WS_CLOSED) return 0;
  if (forked(c)) return give_up(c, KIND_CLOSED, "the websocket was opened before fork()"), 0;
  c->budget = WS_STEP_BYTES;
  c->controls = 0;
  if (c->state == WS_CONNECTING && !connected(c)) return 0;
  if (c->state == WS_UPGRADING && !upgrade(c)) return 0;
  return exchange(c);
}

/* the oldest message received and not yet read (it stays), or NULL */
const wsmsg *wsconn_peek(const wsconn *c) {
  return c->first;
}

/* the oldest message received and not yet read (the caller frees it), or NULL */
wsmsg *wsconn_pop(wsconn *c) {
  wsmsg *m = c->first;
  if (m == NULL) return NULL;
  c->first = m->next;
  if (c->first == NULL) c->last = NULL;
  c->inbox -= m->len;
  return m;
}

/* queues a text (or binary) message and sends what the socket takes now.
** Returns 0 when c is not open (or out of memory). */
int wsconn_send(wsconn *c, const char *data, size_t len, int binary) {
  struct wslay_event_msg m = { binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME, (const uint8_t *)data, len };
  if (c->state != WS_OPEN || wslay_event_queue_msg(c->ws, &m) != 0) return 0;
  c->tx_msgs++;
  if (wslay_event_send(c->ws) != 0) return give_up(c, KIND_PROTOCOL, "sending failed"), 1;
  return 1;
}

/* ends c: a close frame with `code` if it is open and the socket takes it
** now (nothing is waited for), then the connection goes */
void wsconn_close(wsconn *c, int code) {
  if (c->state == WS_OPEN && !forked(c) && wslay_event_queue_close(c->ws, (uint16_t)code, NULL, 0) == 0) {
    wslay_event_send(c->ws);
    c->close_code = code;
  }
  if (c->state != WS_CLOSED) give_up(c, KIND_CLOSED, "closed by the caller");
}

/* frees everything c holds; idempotent */
void wsconn_free(wsconn *c) {
  wsmsg *m;
  if (c->state != WS_CLOSED || c->x.easy || c->easy || c->home.far.multi) drop(c);
  if (c->pfd >= 0) close(c->pfd);
  c->pfd = -1;
  while ((m = wsconn_pop(c)) != NULL) free(m);
  free(c->req);
  free(c->in);
  free(c->body);
  buf_free(&c->head);
  c->req = NULL;
  c->in = NULL;
  c->body = NULL;
}

/* the descriptor to wait on before the next step, and for what; -1: none
** (closed; or wait for wsconn_timeout) */
int wsconn_pollfd(wsconn *c, const char **events) {
  *events = "r";
  if (c->state == WS_CONNECTING) return transfer_pollfd(&c->x, events);
  if (c->state == WS_CLOSED) return -1;
  if (c->want_write || (c->state == WS_UPGRADING && c->reqoff < c->reqlen)) *events = "rw";
  return c->pfd;
}

/* seconds after which to step even without a wake-up: while connecting,
** the connect's deadline (plus a margin); else none (-1) */
double wsconn_timeout(wsconn *c) {
  return c->state == WS_CONNECTING ? transfer_timeout(&c->x) : -1;
}
