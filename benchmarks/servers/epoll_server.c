/*
 * epoll_server: a caret server in C, one thread, epoll, the ceiling that
 * benchmarks/compare.py puts beside the Python servers: what benchmarks/cload.c
 * reaches against a server that costs next to nothing per event shows that the
 * generator was not what limited the other rows.
 *
 *   cc -O2 -o epoll_server benchmarks/servers/epoll_server.c
 *   ./epoll_server [PORT]      # says where it listens, as caret does
 *
 * It keeps the rules of docs/protocol.rst: greeting '*', WAIT_FOR_MSG and
 * IN_MSG, (b + 1) mod 256 inside a message; replies owed when the client
 * half-closes are sent before it closes.  Like the Python servers it writes a
 * reply at once and stops reading a client whose replies back up, until they
 * drain.  It is a yardstick, not part of the package.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536

struct conn {
    int fd;
    int inMessage;
    unsigned char *pending; /* reply bytes the kernel has not taken yet */
    size_t pendingLen, pendingOff;
};

static int ep;

static void watch(struct conn *c, int op, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(ep, op, c->fd, &ev);
}

static void drop(struct conn *c) {
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Send what is owed; 1 if all of it went, 0 if the rest waits, -1 on error. */
static int flush(struct conn *c) {
    while (c->pendingOff < c->pendingLen) {
        ssize_t w = send(c->fd, c->pending + c->pendingOff,
                         c->pendingLen - c->pendingOff, MSG_NOSIGNAL);
        if (w < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        c->pendingOff += (size_t)w;
    }
    c->pendingLen = c->pendingOff = 0;
    return 1;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    int port = argc > 1 ? atoi(argv[1]) : 0;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(listener, 4096) < 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) < 0) {
        perror("epoll_server");
        return 1;
    }
    printf("caret listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &lev);
    unsigned char *in = malloc(READ_SIZE), *out = malloc(READ_SIZE);
    struct epoll_event events[1024];

    for (;;) {
        int ready = epoll_wait(ep, events, 1024, -1);
        if (ready < 0 && errno != EINTR) {
            perror("epoll_server: epoll_wait");
            return 1;
        }
        for (int e = 0; e < ready; e++) {
            struct conn *c = events[e].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    send(fd, "*", 1, MSG_NOSIGNAL);
                    watch(c, EPOLL_CTL_ADD, EPOLLIN);
                }
                continue;
            }
            if (c->pendingLen) { /* writable: drain, then read again */
                int done = flush(c);
                if (done < 0) drop(c);
                else if (done) watch(c, EPOLL_CTL_MOD, EPOLLIN);
                continue;
            }
            ssize_t r = recv(c->fd, in, READ_SIZE, 0);
            if (r < 0) {
                if (errno != EAGAIN) drop(c);
                continue;
            }
            if (r == 0) { /* half-close: nothing is owed, since it reads only when
                             every reply has gone */
                drop(c);
                continue;
            }
            size_t n = 0;
            for (ssize_t i = 0; i < r; i++) {
                unsigned char b = in[i];
                if (!c->inMessage) {
                    if (b == '^') c->inMessage = 1;
                } else if (b == '$') {
                    c->inMessage = 0;
                } else {
                    out[n++] = (unsigned char)(b + 1);
                }
            }
            if (!n) continue;
            ssize_t w = send(c->fd, out, n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                drop(c);
                continue;
            }
            if (w < 0) w = 0;
            if ((size_t)w < n) { /* the kernel is full: keep the rest, stop reading */
                c->pending = realloc(c->pending, n - (size_t)w);
                memcpy(c->pending, out + w, n - (size_t)w);
                c->pendingLen = n - (size_t)w;
                c->pendingOff = 0;
                watch(c, EPOLL_CTL_MOD, EPOLLOUT);
            }
        }
    }
}
