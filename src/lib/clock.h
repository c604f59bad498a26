/*
** clock.h -- the module's one clock: monotonic seconds (core.monotonic,
** deadlines, lane timers, step hints). Header-only; Lua-free.
*/
#ifndef IBKR_LIB_CLOCK_H
#define IBKR_LIB_CLOCK_H

#include <time.h>

static inline double clock_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

#endif
