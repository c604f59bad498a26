/*
** engine.h -- the engine thread (src/lib/engine.c): one for the process,
** running the non-blocking exchanges that cannot run in a warm lane on the
** caller's thread, and the lanes lent to it; its queues, completion
** descriptors, and the process events (exit, fork). Lua-free.
*/
#ifndef IBKR_LIB_ENGINE_H
#define IBKR_LIB_ENGINE_H

#include "xfer.h"

int engine_init(void);
unsigned engine_generation(void);
int engine_queue(xfer *x);
int engine_state(xfer *x);
void engine_cancel(xfer *x);

#endif
