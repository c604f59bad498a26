/*
** handle.h -- one exchange's libcurl easy handle (src/lib/handle.c): the
** session's template and pool, the options of an exchange, the callbacks
** that fill the exchange, the facts read when it ends. Lua-free.
*/
#ifndef IBKR_LIB_HANDLE_H
#define IBKR_LIB_HANDLE_H

#include "xfer.h"

CURL *handle_template(char *err, size_t errlen);
int handle_take(xfer *x, xhome *h);
CURLcode handle_set(xfer *x, const callspec *cs, const char *url, struct curl_slist *hl, long timeout_ms);
CURLcode handle_bind(xfer *x, long timeout_ms);
void handle_gather(xfer *x, CURLcode code);
int handle_restart(xfer *x, double now);
void handle_give(xfer *x, xhome *h);

#endif
