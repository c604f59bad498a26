/*
** wsconn.h -- one websocket connection, client side (RFC 6455), without Lua
** (src/lib/wsconn.c): the connection is libcurl's (CURLOPT_CONNECT_ONLY,
** made on the engine thread: transfer_connect), the bytes go through
** curl_easy_send and curl_easy_recv, libwslay frames them. websocket.c
** makes Lua values of it. Lua-free.
*/
#ifndef IBKR_LIB_WSCONN_H
#define IBKR_LIB_WSCONN_H

#include <wslay/wslay.h>

#include "buf.h"
#include "xfer.h"

#define WS_READ_SIZE 16384          /* one TLS record: a read never leaves decrypted bytes behind */
#define WS_STEP_BYTES 16384         /* bytes one step reads at most (then it says: more) */
#define WS_STEP_CONTROLS 16         /* pings (each answered) and pongs one step takes, about (then: more) */
#define WS_RECV_CHUNK 1024          /* bytes handed to wslay at a time */
#define WS_INBOX_MAX 65536          /* no reading while this much was received and not read */
#define WS_HEAD_MAX 16384           /* the upgrade answer's status line and headers */
#define WS_MAX_MESSAGE (1024 * 1024) /* default bound of one received message */
#define WS_LINGER 1.0               /* seconds a closed connection waits for the gateway to end it */

enum { WS_CONNECTING, WS_UPGRADING, WS_OPEN, WS_CLOSED };

/* a message received whole, not yet read */
typedef struct wsmsg {
  struct wsmsg *next;
  size_t len;
  int binary;
  char data[];
} wsmsg;

/* what wsconn_start takes besides the handle */
typedef struct wsopts {
  const char *url;            /* the URL connected to (ws:// as http://, wss:// as https://) */
  const char *head;           /* the upgrade request's request line, Host and headers (CRLF each) */
  struct curl_slist *resolve; /* the session's localhost pins (copied) */
  size_t max_message;         /* bytes of one received message */
  size_t body_cut;            /* bytes kept of what comes with a refused upgrade */
  long timeout_ms;            /* the connect, proxy tunnel and TLS handshake */
} wsopts;

/* All fields belong to the Lua thread, but for `x` while the engine makes
** the connection (lib/transfer.c's rules for an exchange). */
typedef struct wsconn {
  int state;                  /* WS_* */
  xhome home;                 /* its own part: the far lane its connection is made in and lives in */
  xfer x;                     /* the connect (CONNECT_ONLY) */
  CURL *easy;                 /* then its handle, kept in the lane: the connection */
  curl_socket_t sock;         /* the connection's socket, once connected */
  int pfd;                    /* a duplicate of it handed to waiters; always readable once closed */
  char *req;                  /* the upgrade request */
  size_t reqlen, reqoff;
  char accept[32];            /* the Sec-WebSocket-Accept it must answer */
  ibuf head;                  /* the upgrade answer as it arrives */
  unsigned char *in;          /* bytes read, not yet framed (WS_READ_SIZE) */
  size_t inoff, inlen;
  size_t budget;              /* bytes this step may still read */
  int controls;               /* pings and pongs this step took */
  wslay_event_context_ptr ws;
  wsmsg *first, *last;        /* received messages, oldest first */
  size_t inbox;               /* their bytes */
  size_t max_message, body_cut;
  double opened, last_rx;     /* monotonic seconds: upgrade done; last bytes received */
  int want_write;             /* the last send met a full socket */
  /* why it closed: kind (KIND_*, lib/kind.h) -1 while it has not */
  int kind;
  char why[256];
  long status;                /* the upgrade answer's status, when it was not 101 */
  char *body;                 /* what came with such an answer, cut */
  size_t bodylen;
  int close_code;             /* the close frame's code (received, or sent on an error); 0: none */
  long long rx_bytes, tx_bytes, rx_msgs, tx_msgs;
} wsconn;

void wsconn_init(wsconn *c);
int wsconn_start(wsconn *c, CURL *e, const wsopts *o);
int wsconn_step(wsconn *c);
const wsmsg *wsconn_peek(const wsconn *c);
wsmsg *wsconn_pop(wsconn *c);
int wsconn_send(wsconn *c, const char *data, size_t len, int binary);
void wsconn_close(wsconn *c, int code);
void wsconn_free(wsconn *c);
int wsconn_pollfd(wsconn *c, const char **events);
double wsconn_timeout(wsconn *c);

#endif
