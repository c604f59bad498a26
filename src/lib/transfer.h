/*
** transfer.h -- the exchanges of a session, as the Lua side sees them
** (src/lib/transfer.c): open one, run it blocking or hand it over, step,
** wait on it, close it; close a session's part. session.c and request.c
** include this (and through it the records in xfer.h). Lua-free.
*/
#ifndef IBKR_LIB_TRANSFER_H
#define IBKR_LIB_TRANSFER_H

#include "xfer.h"

/* what transfer_open takes besides the callspec */
typedef struct xopts {
  char *url;                  /* malloc'd; the exchange keeps it (freed by transfer_close) */
  const char *url_ref;        /* or the URL lent by the session (url NULL): libcurl copies it */
  CURLU *uh;                  /* the URL parsed, from the session's cache, or NULL (libcurl parses
                              ** url itself, ~10k instructions every exchange) */
  int lend_uh;                /* a blocking exchange (never on the engine thread: the cache cannot
                              ** change while libcurl reads uh) takes uh as it is; others a copy */
  struct curl_slist *callh;   /* per-call header list or NULL; kept likewise */
  struct curl_slist *headers; /* the list to send: callh or one of the session's */
  long timeout_ms;
  size_t max_body;
  long long ca_not_after;     /* copied into the exchange: TLS evidence (request.c) */
} xopts;

void transfer_init(xfer *x);
void transfer_home_init(xhome *h);
CURL *transfer_home_open(xhome *h, char *err, size_t errlen);
void transfer_home_close(xhome *h, int forked);
int transfer_connect(xfer *x, xhome *h, CURL *e, long timeout_ms);
void transfer_connect_close(xhome *h, CURL *e, double linger, int forked);
int transfer_open(xfer *x, xhome *h, const callspec *cs, const xopts *o);
/* asked between the sleeps of a blocking wait: nonzero ends the wait */
typedef int (*transfer_stopfn)(void *ud);
int transfer_perform(xfer *x, transfer_stopfn stop, void *ud);
int transfer_submit(xfer *x);
int transfer_done(xfer *x);
int transfer_wait(xfer *x, double timeout, transfer_stopfn stop, void *ud);
int transfer_pollfd(xfer *x, const char **events);
double transfer_timeout(xfer *x);
void transfer_close(xfer *x);

#endif
