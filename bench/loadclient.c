/*
 * The bench's load generator in C: thousands of Stellar-like websocket
 * clients on one epoll loop, costing a few microseconds per frame, so that
 * on a small machine it leaves the cores to the relay it measures.
 *
 * It speaks the same commands as bench/loadclient.py (the Python one, kept
 * for machines without a C compiler), one per stdin line, and answers each
 * with one JSON line on stdout:
 *
 *   connect HOST PORT PATH STALLED KEYS_FILE   {"connected": N, "seconds": S}
 *   report                    {"arrivals": [[...]...], "stalled_codes": [...],
 *                              "healthy_codes": [...]}
 *   pause                     {"paused": true}
 *   drain EXPECT              {"seconds": S}
 *   resume                    {"resumed": true}
 *   quit                      {"bye": true}
 *
 * Arrival times are CLOCK_MONOTONIC seconds, the clock of Python's
 * time.monotonic(), taken once per read. The last STALLED clients get a
 * 4 KiB receive buffer and stop reading once upgraded; "resume" lets them
 * read again to see their close code. Pings are answered with a masked pong.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IN_FLIGHT 512   /* connects at once, as the Python client does */
#define READ_SIZE 65536
#define STDIN_TAG 0

typedef struct {
    int fd;
    int connected;      /* TCP connect finished, handshake sent */
    int upgraded;
    int stalled;
    int closed;
    int close_code;     /* -1: none seen yet */
    unsigned char *buffer;  /* bytes of a frame (or handshake) not yet whole */
    size_t buffered, capacity;
    double *arrivals;
    size_t count, room;
} Client;

static Client *clients;
static size_t total, opened, upgraded_count, failed;
static int epoll_fd;
static char *handshake_for_key(const char *key);
static char host[256], path[1024];
static int port;
static double connect_started;
static int connecting, draining;
static size_t drain_expect;
static double drain_started;
static char failure[256];

static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + now.tv_nsec / 1e9;
}

static void *grow(void *memory, size_t size) {
    void *bigger = realloc(memory, size);
    if (!bigger) {
        perror("realloc");
        exit(1);
    }
    return bigger;
}

static char **keys;

static void watch(Client *c, uint32_t events, int op) {
    struct epoll_event event = {.events = events, .data.u64 = (uint64_t)(c - clients) + 1};
    epoll_ctl(epoll_fd, op, c->fd, &event);
}

static void finish(Client *c, int code) {
    if (c->closed) return;
    if (c->close_code < 0) c->close_code = code;
    c->closed = 1;
    close(c->fd);
}

static void fail_connect(Client *c, const char *why) {
    if (!failure[0]) snprintf(failure, sizeof failure, "%s", why);
    failed++;
    finish(c, 1006);
}

static void open_next(void) {
    while (opened < total && opened - upgraded_count - failed < IN_FLIGHT) {
        Client *c = &clients[opened++];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->stalled) {
            int small = 4096;
            setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        }
        struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, host, &address.sin_addr);
        if (connect(c->fd, (struct sockaddr *)&address, sizeof address) < 0 &&
            errno != EINPROGRESS) {
            fail_connect(c, "connect failed");
            continue;
        }
        watch(c, EPOLLOUT, EPOLL_CTL_ADD);
    }
}

static void keep(Client *c, const unsigned char *data, size_t size) {
    if (c->buffered + size > c->capacity) {
        c->capacity = (c->buffered + size) * 2;
        c->buffer = grow(c->buffer, c->capacity);
    }
    memcpy(c->buffer + c->buffered, data, size);
    c->buffered += size;
}

/* Whole frames out of data; returns how many bytes were used. */
static size_t frames(Client *c, const unsigned char *data, size_t size, double now) {
    size_t offset = 0;
    while (size - offset >= 2 && !c->closed) {
        int opcode = data[offset] & 0x0F;
        uint64_t length = data[offset + 1] & 0x7F;
        size_t head = 2;
        if (length == 126) {
            if (size - offset < 4) break;
            length = ((uint64_t)data[offset + 2] << 8) | data[offset + 3];
            head = 4;
        } else if (length == 127) {
            if (size - offset < 10) break;
            length = 0;
            for (int i = 0; i < 8; i++) length = (length << 8) | data[offset + 2 + i];
            head = 10;
        }
        if (size - offset < head + length) break;
        const unsigned char *payload = data + offset + head;
        if (opcode == 1) {
            if (c->count == c->room) {
                c->room = c->room ? c->room * 2 : 32;
                c->arrivals = grow(c->arrivals, c->room * sizeof(double));
            }
            c->arrivals[c->count++] = now;
        } else if (opcode == 9 && length <= 125) {
            unsigned char pong[2 + 4 + 125] = {0x8A, (unsigned char)(0x80 | length)};
            memcpy(pong + 6, payload, length);  /* zero mask: payload as is */
            if (write(c->fd, pong, 6 + length) < 0) { /* the read will see it */ }
        } else if (opcode == 8) {
            finish(c, length >= 2 ? (payload[0] << 8) | payload[1] : 1005);
        }
        offset += head + length;
    }
    return offset;
}

static void upgraded(Client *c) {
    c->upgraded = 1;
    upgraded_count++;
    if (c->stalled) watch(c, 0, EPOLL_CTL_MOD);
    open_next();
}

static void on_data(Client *c, const unsigned char *data, size_t size, double now) {
    if (c->buffered) {
        keep(c, data, size);
        data = c->buffer;
        size = c->buffered;
    }
    size_t used = 0;
    if (!c->upgraded) {
        const unsigned char *end = memmem(data, size, "\r\n\r\n", 4);
        if (!end) {
            if (!c->buffered) keep(c, data, size);
            return;
        }
        if (size < 12 || memcmp(data, "HTTP/1.1 101", 12) != 0) {
            fail_connect(c, "the relay refused an upgrade");
            return;
        }
        used = (size_t)(end - data) + 4;
        upgraded(c);
    }
    used += frames(c, data + used, size - used, now);
    if (c->closed) return;
    size_t left = size - used;
    if (c->buffered) {
        memmove(c->buffer, c->buffer + used, left);
        c->buffered = left;
    } else if (left) {
        keep(c, data + used, left);
    }
}

static void on_event(Client *c, uint32_t events, double now) {
    static unsigned char chunk[READ_SIZE];
    if (c->closed) return;
    if (!c->connected) {
        int error = 0;
        socklen_t length = sizeof error;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &length);
        if (error) {
            fail_connect(c, "connect refused");
            return;
        }
        char *request = handshake_for_key(keys[c - clients]);
        if (write(c->fd, request, strlen(request)) < 0) {
            fail_connect(c, "handshake write failed");
            return;
        }
        c->connected = 1;
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
        return;
    }
    (void)events;
    ssize_t got = read(c->fd, chunk, sizeof chunk);
    if (got > 0) {
        on_data(c, chunk, (size_t)got, now);
    } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        if (!c->upgraded) fail_connect(c, "closed before upgrade");
        else finish(c, 1006);
    }
}

static char *handshake_for_key(const char *key) {
    static char request[4096];
    snprintf(request, sizeof request,
             "GET %s?key=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: c3RlbGxhci1yZWxheS0xNg==\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n",
             path, key, host, port);
    return request;
}

static void answer(const char *text) {
    fputs(text, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

static void load_keys(const char *file, size_t stalled) {
    FILE *in = fopen(file, "r");
    if (!in) {
        perror(file);
        exit(1);
    }
    char line[512];
    size_t room = 0;
    total = 0;
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (total == room) {
            room = room ? room * 2 : 1024;
            keys = grow(keys, room * sizeof(char *));
        }
        keys[total++] = strdup(line);
    }
    fclose(in);
    clients = calloc(total, sizeof(Client));
    for (size_t i = 0; i < total; i++) {
        clients[i].close_code = -1;
        clients[i].stalled = i >= total - stalled;
    }
}

static void print_codes(int want_stalled) {
    int first = 1;
    for (size_t i = 0; i < total; i++) {
        if (clients[i].stalled != want_stalled) continue;
        int code = clients[i].close_code;
        if (code < 0) printf(first ? "null" : ", null");
        else printf(first ? "%d" : ", %d", code);
        first = 0;
    }
}

static void report(void) {
    fputs("{\"arrivals\": [", stdout);
    int first = 1;
    for (size_t i = 0; i < total; i++) {
        Client *c = &clients[i];
        if (c->stalled) continue;
        fputs(first ? "[" : ", [", stdout);
        for (size_t k = 0; k < c->count; k++) printf(k ? ", %.9f" : "%.9f", c->arrivals[k]);
        fputs("]", stdout);
        first = 0;
    }
    fputs("], \"stalled_codes\": [", stdout);
    print_codes(1);
    fputs("], \"healthy_codes\": [", stdout);
    print_codes(0);
    answer("]}");
}

static void read_everyone(int stalled_only) {
    for (size_t i = 0; i < total; i++)
        if (!clients[i].closed && (!stalled_only || clients[i].stalled))
            watch(&clients[i], EPOLLIN, EPOLL_CTL_MOD);
}

static int drained(void) {
    for (size_t i = 0; i < total; i++)
        if (!clients[i].stalled && clients[i].count < drain_expect) return 0;
    return 1;
}

static void check_progress(void) {
    char text[512];
    if (connecting && upgraded_count + failed == total) {
        connecting = 0;
        if (failed) snprintf(text, sizeof text, "{\"error\": \"%s (%zu clients)\"}", failure, failed);
        else snprintf(text, sizeof text, "{\"connected\": %zu, \"seconds\": %.6f}", total,
                      monotonic() - connect_started);
        answer(text);
    }
    if (draining && drained()) {
        double last = 0;
        for (size_t i = 0; i < total; i++)
            if (!clients[i].stalled && clients[i].arrivals[drain_expect - 1] > last)
                last = clients[i].arrivals[drain_expect - 1];
        draining = 0;
        snprintf(text, sizeof text, "{\"seconds\": %.6f}", last - drain_started);
        answer(text);
    }
}

/* One command line; returns 0 on quit. */
static int command(char *line) {
    char keys_file[1024];
    size_t stalled;
    if (sscanf(line, "connect %255s %d %1023s %zu %1023s", host, &port, path, &stalled,
               keys_file) == 5) {
        load_keys(keys_file, stalled);
        connect_started = monotonic();
        connecting = 1;
        open_next();
        check_progress();
    } else if (strncmp(line, "report", 6) == 0) {
        report();
    } else if (strncmp(line, "pause", 5) == 0) {
        for (size_t i = 0; i < total; i++)
            if (!clients[i].closed) watch(&clients[i], 0, EPOLL_CTL_MOD);
        answer("{\"paused\": true}");
    } else if (sscanf(line, "drain %zu", &drain_expect) == 1) {
        drain_started = monotonic();
        draining = 1;
        read_everyone(0);
        check_progress();
    } else if (strncmp(line, "resume", 6) == 0) {
        read_everyone(1);
        answer("{\"resumed\": true}");
    } else if (strncmp(line, "quit", 4) == 0) {
        for (size_t i = 0; i < total; i++) finish(&clients[i], 1006);
        answer("{\"bye\": true}");
        return 0;
    } else {
        answer("{\"error\": \"unknown command\"}");
    }
    return 1;
}

int main(void) {
    struct rlimit files;
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);

    epoll_fd = epoll_create1(0);
    struct epoll_event in = {.events = EPOLLIN, .data.u64 = STDIN_TAG};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, 0, &in);
    static struct epoll_event events[4096];
    static char line[4096];
    size_t line_length = 0;

    for (;;) {
        int ready = epoll_wait(epoll_fd, events, 4096, -1);
        if (ready < 0 && errno == EINTR) continue;
        double now = monotonic();
        for (int i = 0; i < ready; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag != STDIN_TAG) {
                on_event(&clients[tag - 1], events[i].events, now);
                continue;
            }
            ssize_t got = read(0, line + line_length, sizeof line - 1 - line_length);
            if (got <= 0) return 0;
            line_length += (size_t)got;
            char *end;
            while ((end = memchr(line, '\n', line_length))) {
                *end = 0;
                if (!command(line)) return 0;
                size_t used = (size_t)(end - line) + 1;
                memmove(line, line + used, line_length - used);
                line_length -= used;
            }
        }
        check_progress();
    }
}
