/*
** lane.h -- a session's warm lane (src/lib/lane.c): a multi handle driven
** through curl_multi_socket_action, one exchange at a time, on the Lua
** thread while it holds a kept connection, else by the engine thread.
** Lua-free.
*/
#ifndef IBKR_LIB_LANE_H
#define IBKR_LIB_LANE_H

#include <poll.h>

#include "xfer.h"

/* what lane_step says of the exchange it stepped */
enum { LANE_RUNS, LANE_ENDED, LANE_GONE };

int lane_take(xfer *x);
int lane_add(xfer *x, int refuse);
int lane_step(xfer *x);
void lane_act(xhome *h, const unsigned short *re);
xfer *lane_collect(xhome *h);
int lane_waitfds(xhome *h, struct curl_waitfd *w, int *ms, double now);
int lane_pollfds(xhome *h, struct pollfd *p);
int lane_pollfd(xfer *x, const char **events);
void lane_drop(xfer *x);
void lane_abandon(xfer *x, int forked);
void lane_close(xhome *h, int forked);

#endif
