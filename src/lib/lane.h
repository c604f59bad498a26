/*
** lane.h -- a session's lanes (src/lib/lane.c): multi handles driven
** through curl_multi_socket_action. The warm lane runs one exchange at a
** time, on the Lua thread while it holds a kept connection, else lent to
** the engine thread; the far lane runs the session's other non-blocking
** exchanges on the engine thread. Lua-free.
*/
#ifndef IBKR_LIB_LANE_H
#define IBKR_LIB_LANE_H

#include <poll.h>

#include "xfer.h"

/* what lane_step says of the exchange it stepped */
enum { LANE_RUNS, LANE_ENDED, LANE_GONE };

void lane_init(lane *l, xhome *h, int warm);
int lane_make(lane *l);
int lane_take(xfer *x);
int lane_add(lane *l, xfer *x, int refuse);
int lane_step(xfer *x);
void lane_act(lane *l, const struct pollfd *p, int n);
xfer *lane_collect(lane *l);
int lane_pollfds(const lane *l, struct pollfd *p, int room);
int lane_ms(const lane *l, double now, int ms);
curl_socket_t lane_socket(const lane *l, const char **events);
void lane_drop(lane *l, xfer *x);
CURLM *lane_release(lane *l);
void lane_close(lane *l, int forked);

#endif
