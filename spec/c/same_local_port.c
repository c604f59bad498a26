/*
** same_local_port.c -- an LD_PRELOAD shim for spec/connection_identity_spec.lua: with
** IBKR_SPEC_SAME_LOCAL_PORT set, every IPv4 connect() of the process binds its socket first
** (SO_REUSEADDR) to the local port the first one took, so that connections to two
** hosts on one port come from one local port -- a state the kernel reaches by chance (a local
** port is unique per destination, not per process), here made certain. A bind that fails makes
** the connect fail: the spec never passes without the collision it is about.
**   cc -shared -fPIC -o build/same_local_port.so spec/c/same_local_port.c -ldl
*/
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int local_port;                /* host order; 0 until the first connect */

/* binds fd to `port` on any address, sharing it (SO_REUSEADDR); 0 when that fails */
static int bind_port(int fd, int port) {
  struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
  int one = 1;
  me.sin_addr.s_addr = htonl(INADDR_ANY);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  return bind(fd, (const struct sockaddr *)&me, sizeof me) == 0;
}

int connect(int fd, const struct sockaddr *a, socklen_t len) {
  int (*real)(int, const struct sockaddr *, socklen_t);
  *(void **)&real = dlsym(RTLD_NEXT, "connect");
  if (getenv("IBKR_SPEC_SAME_LOCAL_PORT") && a->sa_family == AF_INET) {
    int to = ntohs(((const struct sockaddr_in *)a)->sin_port), bound = 0;
    if (local_port != 0) {
      bound = bind_port(fd, local_port);
    } else {                                  /* a port of the ephemeral range nobody listens on */
      int p = 40000 + (int)(getpid() % 9973);
      for (int tries = 0; !bound && tries < 200; tries++, p++)
        if (p != to && (bound = bind_port(fd, p))) local_port = p;
    }
    if (!bound) return -1;
  }
  return real(fd, a, len);
}
