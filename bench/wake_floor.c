/* The floor of a queue-depth-1 round trip on this machine: a server that does nothing but
 * receive a 48-byte request and send a 48+4096-byte reply over loopback TCP (an iSCSI READ's
 * shape), and a client that sends the next request as soon as a reply is in. Each side either
 * sleeps in the kernel while it waits ("sleep": blocking recv / poll) or polls without
 * sleeping ("poll": non-blocking recv in a loop). The server prints the CPU it used per round
 * trip (getrusage), the client the round trips per second. bench/wake_floor.py runs it.
 *
 *   wake_floor server PORT sleep|poll        (serves one connection, then prints)
 *   wake_floor client PORT sleep|poll SECONDS
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { REQUEST = 48, REPLY = 48 + 4096 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Receives exactly n bytes; polling or sleeping. Returns 0 at end of stream or on error. */
static int receive(int fd, char *buf, int n, int polling) {
    int got = 0;
    while (got < n) {
        if (!polling) {
            struct pollfd p = {fd, POLLIN, 0};
            if (poll(&p, 1, -1) < 0 && errno != EINTR) return 0;
        }
        ssize_t r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
        if (r == 0) return 0;
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return 0;
        }
        got += r;
    }
    return 1;
}

static int send_all(int fd, const char *buf, int n) {
    int sent = 0;
    while (sent < n) {
        ssize_t r = send(fd, buf + sent, n - sent, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return 0;
        }
        sent += r;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: wake_floor server|client PORT sleep|poll [SECONDS]\n");
        return 2;
    }
    static char buf[REPLY];
    memset(buf, 0x5a, sizeof buf);
    int polling = strcmp(argv[3], "poll") == 0, one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (strcmp(argv[1], "server") == 0) {
        int listener = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1)) {
            perror("listen");
            return 1;
        }
        printf("listening\n");
        fflush(stdout);
        int fd = accept(listener, NULL, NULL);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct rusage before, after;
        getrusage(RUSAGE_SELF, &before);
        long trips = 0;
        while (receive(fd, buf, REQUEST, polling) && send_all(fd, buf, REPLY)) trips++;
        getrusage(RUSAGE_SELF, &after);
        double cpu = (after.ru_utime.tv_sec - before.ru_utime.tv_sec) +
                     (after.ru_stime.tv_sec - before.ru_stime.tv_sec) +
                     ((after.ru_utime.tv_usec - before.ru_utime.tv_usec) +
                      (after.ru_stime.tv_usec - before.ru_stime.tv_usec)) * 1e-6;
        printf("trips %ld cpu_s %.6f\n", trips, cpu);
        return 0;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
        perror("connect");
        return 1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double seconds = argc > 4 ? atof(argv[4]) : 3.0, start = now(), elapsed;
    long trips = 0;
    while ((elapsed = now() - start) < seconds) {
        if (!send_all(fd, buf, REQUEST) || !receive(fd, buf, REPLY, polling)) return 1;
        trips++;
    }
    printf("trips %ld seconds %.6f\n", trips, elapsed);
    return 0;
}
