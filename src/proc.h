/* proc.h -- child processes watched without blocking (proc.c): core.spawn and the
** "ibkr.proc" class, registered with the module table on the top of the stack */
#ifndef IBKR_PROC_H
#define IBKR_PROC_H
#include "lua.h"
void proc_open(lua_State *L);
#endif
