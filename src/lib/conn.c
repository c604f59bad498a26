/*
** conn.c -- the connections libcurl opens, watched for one fault: bytes a
** server sent that no request asked for. libcurl (7.88) reuses a kept-alive
** connection that has unread input, and would hand those bytes to the next
** request as its answer, shifting every later answer by one. So every
** socket is registered when libcurl opens it, and just before a request
** goes out on a connection that was used before (CURLOPT_PREREQFUNCTION)
** its socket is checked: any input there is stale. The socket is then
** replaced, in place, by one whose peer is gone: libcurl's send fails on
** a reused connection, which libcurl answers by sending the request again
** on a new connection (never a duplicate: nothing was sent on the old one).
** Two more duties ride on the same callbacks: an exchange may forbid new
** sockets (the warm lane's, on the Lua thread: no connect, no handshake
** there), and a lane learns when its kept connection's socket is closed.
** Called by: lib/handle.c, lib/engine.c; then libcurl, on any thread.
** Calls: nothing of ours.
** Lua-free, like every file in src/lib/.
*/
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include "conn.h"

typedef struct sock {
  curl_socket_t fd;
  int lport, rport;           /* 0 until first looked up */
  int used;                   /* a request went out on it already */
} sock;

/* every socket libcurl opened and has not closed, on any thread */
static struct {
  pthread_mutex_t mu;
  sock *v;
  int n, cap;
} registry = { .mu = PTHREAD_MUTEX_INITIALIZER, .v = NULL, .n = 0, .cap = 0 };

/* ud: the exchange's connwatch (CURLOPT_OPENSOCKETDATA), or NULL */
static curl_socket_t on_open(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  connwatch *w = ud;
  curl_socket_t fd;
  (void)purpose;
  if (w && w->refuse) {
    w->refused = 1;
    return CURL_SOCKET_BAD;
  }
  fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd == CURL_SOCKET_BAD) return fd;
  pthread_mutex_lock(&registry.mu);
  if (registry.n == registry.cap) {
    int cap = registry.cap ? registry.cap * 2 : 64;
    sock *v = realloc(registry.v, sizeof *v * (size_t)cap);
    if (v) registry.v = v, registry.cap = cap;
  }
  if (registry.n < registry.cap) registry.v[registry.n++] = (sock){ .fd = fd };   /* untracked when out of memory */
  pthread_mutex_unlock(&registry.mu);
  return fd;
}

/* ud (CURLOPT_CLOSESOCKETDATA, kept by the connection from its creation):
** NULL, or where a lane notes its kept socket, forgotten here */
static int on_close(void *ud, curl_socket_t fd) {
  curl_socket_t *keep = ud;
  if (keep && *keep == fd) *keep = CURL_SOCKET_BAD;
  pthread_mutex_lock(&registry.mu);
  for (int i = 0; i < registry.n; i++)
    if (registry.v[i].fd == fd) {
      registry.v[i] = registry.v[--registry.n];
      break;
    }
  pthread_mutex_unlock(&registry.mu);
  return close(fd);
}

static int port_of(curl_socket_t fd, int peer) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int rc = peer ? getpeername(fd, (struct sockaddr *)&ss, &len) : getsockname(fd, (struct sockaddr *)&ss, &len);
  if (rc != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return 0;
}

/* under registry.mu: the registered socket of the connection (lport, rport) */
static sock *find(int lport, int rport) {
  for (int i = 0; i < registry.n; i++) {
    sock *s = &registry.v[i];
    if (s->lport == 0) {
      s->lport = port_of(s->fd, 0);
      s->rport = port_of(s->fd, 1);
    }
    if (s->lport == lport && s->rport == rport) return s;
  }
  return NULL;
}

/* make fd a socket whose peer is gone: reads see EOF, writes fail */
static void kill_fd(curl_socket_t fd) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    shutdown(fd, SHUT_RDWR);
    return;
  }
  close(sv[1]);
  dup2(sv[0], fd);
  close(sv[0]);
}

static int on_prereq(void *ud, char *rip, char *lip, int rport, int lport) {
  sock *s;
  (void)ud;
  (void)rip;
  (void)lip;
  if (lport == 0) return CURL_PREREQFUNC_OK;      /* not TCP (a unix socket): nothing to match */
  pthread_mutex_lock(&registry.mu);
  s = find(lport, rport);
  if (s && s->used++) {
    struct pollfd p = { .fd = s->fd, .events = POLLIN };
    if (poll(&p, 1, 0) > 0) kill_fd(s->fd);
  }
  pthread_mutex_unlock(&registry.mu);
  return CURL_PREREQFUNC_OK;
}

/* the callbacks on a session's template (duplicated into every handle);
** each exchange sets their data (handle.c) */
int conn_watch(CURL *e) {
  return curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq) == CURLE_OK;
}

/* fork(): the child starts with the lock free */
void conn_forked(void) {
  pthread_mutex_init(&registry.mu, NULL);
}
