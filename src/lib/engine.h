/*
** engine.h -- the engine thread (src/lib/engine.c): one for the process,
** driving the lanes of every session that hold exchanges for it (a warm
** lane lent to it, a far lane); its queues, completion descriptors, and the
** process events (exit, fork). Lua-free.
*/
#ifndef IBKR_LIB_ENGINE_H
#define IBKR_LIB_ENGINE_H

#include "xfer.h"

int engine_init(void);
unsigned engine_generation(void);
int engine_ready_fd(void);
int engine_queue(xfer *x);
int engine_state(xfer *x);
void engine_cancel(xfer *x);
void engine_watch(xfer *x);
void engine_unwatch(xfer *x);
int engine_retire(CURL *e, CURLM *m, curl_socket_t fd, double linger);

#endif
