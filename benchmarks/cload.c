/*
 * cload: a lean caret load generator in C, the yardstick for caret-bench.
 *
 * One thread, epoll, N connections.  In rr mode (the default) each
 * connection waits for the greeting '*', then sends one message of SIZE bytes
 * ('^', SIZE - 2 body bytes, '$') at a time and waits for its whole reply,
 * checking every byte, for DURATION seconds.  In bulk mode each connection
 * sends '^' and then one endless message body as fast as the server takes
 * it, checking every reply byte (SIZE is ignored).  The body is the same
 * pattern caret-bench sends (every byte but '$', in order), so the two put
 * the same load on a server.
 *
 *   cc -O2 -o cload benchmarks/cload.c
 *   ./cload 127.0.0.1 9090 100 16 10
 *   ./cload 127.0.0.1 9090 1 0 10 bulk
 *
 * prints one JSON object: rounds, rounds_per_s (rr) or bytes, mb_per_s (bulk,
 * reply bytes received), and errors.  Any wrong byte, or a connection lost
 * early, counts as an error and makes the exit status 1.
 * benchmarks/compare.py compiles and runs it; it is not part of the package.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    int greeted;
    int alive;
    size_t got; /* reply bytes of the current round received (rr) */
    unsigned long long sent, received; /* body bytes (bulk) */
};

/* Bulk: the body is 255-byte periods of every byte but '$'. */
#define PERIOD 255
#define CHUNK 65535

static int bulk(struct conn *conns, int n, double duration, int ep);


static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

#define OVER (-2)

/* Wait for ready connections: how many, OVER once the measurement's
 * deadline has passed, -1 on error. */
static int waitReady(int ep, struct epoll_event *events, int measuring,
                     double deadline) {
    int timeout = 1000;
    if (measuring) {
        double left = deadline - now();
        if (left <= 0) return OVER;
        timeout = (int)(left * 1000) + 1;
    }
    int ready = epoll_wait(ep, events, 1024, timeout);
    if (ready < 0 && errno != EINTR) {
        perror("cload: epoll_wait");
        return -1;
    }
    return ready < 0 ? 0 : ready;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: cload HOST PORT CONNECTIONS SIZE DURATION [rr|bulk]\n");
        return 2;
    }
    int bulkMode = argc == 7 && strcmp(argv[6], "bulk") == 0;
    if (argc == 7 && !bulkMode && strcmp(argv[6], "rr") != 0) {
        fprintf(stderr, "cload: the mode must be rr or bulk, not %s\n", argv[6]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), n = atoi(argv[3]), size = atoi(argv[4]);
    double duration = atof(argv[5]);
    if (bulkMode) size = 3;
    if (port <= 0 || n <= 0 || size < 3 || duration <= 0) {
        fprintf(stderr, "cload: bad arguments\n");
        return 2;
    }
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }

    size_t bodylen = size - 2;
    unsigned char *msg = malloc(size), *reply = malloc(bodylen);
    unsigned char *buf = malloc(65536);
    msg[0] = '^';
    msg[size - 1] = '$';
    int b = 0;
    for (size_t i = 0; i < bodylen; i++) {
        if (b == '$') b++;
        msg[1 + i] = (unsigned char)b;
        reply[i] = (unsigned char)((b + 1) % 256);
        b = (b + 1) % 256;
    }

    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "cload: HOST must be an IPv4 address: %s\n", host);
        return 2;
    }

    int ep = epoll_create1(0);
    struct conn *conns = calloc(n, sizeof *conns);
    struct epoll_event *events = malloc(sizeof *events * 1024);
    long errors = 0, rounds = 0;
    int greeted = 0, alive = 0;

    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            perror("cload: connect");
            errors++;
            if (fd >= 0) close(fd);
            continue;
        }
        conns[i].fd = fd;
        conns[i].alive = 1;
        alive++;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }

    if (bulkMode) return bulk(conns, n, duration, ep);

    double start = 0, deadline = 0;
    int measuring = 0;
    while (alive > 0) {
        int ready = waitReady(ep, events, measuring, deadline);
        if (ready == OVER) break;
        if (ready < 0) return 1;
        for (int e = 0; e < ready; e++) {
            struct conn *c = &conns[events[e].data.u32];
            ssize_t r = recv(c->fd, buf, 65536, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                errors++;
                c->alive = 0;
                alive--;
                close(c->fd);
                continue;
            }
            if (!c->greeted) {
                if (r != 1 || buf[0] != '*') {
                    errors++;
                    c->alive = 0;
                    alive--;
                    close(c->fd);
                    continue;
                }
                c->greeted = 1;
                if (++greeted == alive) {
                    measuring = 1;
                    start = now();
                    deadline = start + duration;
                    for (int i = 0; i < n; i++)
                        if (conns[i].alive && send(conns[i].fd, msg, size, 0) != size)
                            errors++;
                }
                continue;
            }
            if (c->got + r > bodylen || memcmp(buf, reply + c->got, r) != 0) {
                errors++;
                c->alive = 0;
                alive--;
                close(c->fd);
                continue;
            }
            c->got += r;
            if (c->got == bodylen) {
                c->got = 0;
                rounds++;
                if (send(c->fd, msg, size, 0) != size) errors++;
            }
        }
    }
    double elapsed = measuring ? now() - start : 0;
    printf("{\"rounds\": %ld, \"rounds_per_s\": %.1f, \"elapsed_s\": %.3f, "
           "\"connections\": %d, \"size\": %d, \"errors\": %ld}\n",
           rounds, elapsed > 0 ? rounds / elapsed : 0.0, elapsed, n, size, errors);
    return errors ? 1 : 0;
}

static void lose(struct conn *c, int *alive, long *errors) {
    (*errors)++;
    c->alive = 0;
    (*alive)--;
    close(c->fd);
}

static int bulk(struct conn *conns, int n, double duration, int ep) {
    static unsigned char body[CHUNK + PERIOD], reply[CHUNK + 1 + PERIOD], buf[65536];
    int b = 0;
    for (size_t i = 0; i < sizeof body; i++) {
        if (b == '$') b++;
        body[i] = (unsigned char)b;
        b = (b + 1) % 256;
    }
    for (size_t i = 0; i < sizeof reply; i++)
        reply[i] = (unsigned char)((body[i % PERIOD] + 1) % 256);
    struct epoll_event *events = malloc(sizeof *events * 1024);
    long errors = 0;
    int alive = 0, greeted = 0;
    for (int i = 0; i < n; i++) alive += conns[i].alive;
    double start = 0, deadline = 0;
    int measuring = 0;
    unsigned long long startBytes = 0, received = 0;
    while (alive > 0) {
        int ready = waitReady(ep, events, measuring, deadline);
        if (ready == OVER) break;
        if (ready < 0) return 1;
        for (int e = 0; e < ready; e++) {
            struct conn *c = &conns[events[e].data.u32];
            if (!c->alive) continue;
            if (events[e].events & EPOLLOUT) {
                ssize_t w = send(c->fd, body + c->sent % PERIOD, CHUNK, MSG_DONTWAIT);
                if (w < 0 && errno != EAGAIN) {
                    lose(c, &alive, &errors);
                    continue;
                }
                if (w > 0) c->sent += (unsigned long long)w;
            }
            if (!(events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t r = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                lose(c, &alive, &errors);
                continue;
            }
            if (!c->greeted) {
                if (r != 1 || buf[0] != '*' || send(c->fd, "^", 1, 0) != 1) {
                    lose(c, &alive, &errors);
                    continue;
                }
                c->greeted = 1;
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT,
                                         .data.u32 = (unsigned)(c - conns)};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                if (++greeted == alive) {
                    measuring = 1;
                    start = now();
                    deadline = start + duration;
                    startBytes = received;
                }
                continue;
            }
            if (memcmp(buf, reply + c->received % PERIOD, (size_t)r) != 0) {
                lose(c, &alive, &errors);
                continue;
            }
            c->received += (unsigned long long)r;
            received += (unsigned long long)r;
        }
    }
    double elapsed = measuring ? now() - start : 0;
    unsigned long long bytes = received - startBytes;
    printf("{\"bytes\": %llu, \"mb_per_s\": %.1f, \"elapsed_s\": %.3f, "
           "\"connections\": %d, \"errors\": %ld}\n",
           bytes, elapsed > 0 ? bytes / elapsed / 1e6 : 0.0, elapsed, n, errors);
    return errors ? 1 : 0;
}
