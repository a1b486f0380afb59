/*
 * sockopt.c - find paho's broker socket; switch off Nagle's algorithm on it;
 * wait for it to be writable.
 *
 * paho.mqtt.c never sets TCP_NODELAY and offers no access to its socket.
 * With Nagle on, the last small PUBLISH of a burst waits for the broker's
 * delayed ACK (~40 ms), which stalls a QoS 1 window and inflates latency.
 * So around connect we note which socket descriptors are new, and set
 * TCP_NODELAY on the new connected TCP socket whose peer port is the
 * broker's.  Runs without the GIL; touches no Python.
 */
#include "sb.h"

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bitmap of descriptors that are sockets now (caller frees with PyMem_RawFree). */
unsigned char *
sb_socket_fds_snapshot(int *nbits)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int max = 1024;
    unsigned char *bits;
    if (d == NULL)
        return NULL;
    bits = PyMem_RawCalloc((size_t)max / 8, 1);
    while (bits && (e = readdir(d)) != NULL) {
        struct stat sb;
        int fd = atoi(e->d_name);
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || fstat(fd, &sb) != 0 || !S_ISSOCK(sb.st_mode))
            continue;
        if (fd >= max) {
            int nmax = max;
            unsigned char *nb;
            while (fd >= nmax)
                nmax *= 2;
            nb = PyMem_RawRealloc(bits, (size_t)nmax / 8);
            if (nb == NULL) {
                PyMem_RawFree(bits);
                bits = NULL;
                break;
            }
            memset(nb + max / 8, 0, (size_t)(nmax - max) / 8);
            bits = nb;
            max = nmax;
        }
        bits[fd / 8] |= (unsigned char)(1u << (fd % 8));
    }
    closedir(d);
    *nbits = max;
    return bits;
}

static int
peer_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

/* Port of a paho server URI: "host:port", "ws://host:port/path", "[::1]:1883". */
static int
uri_port(const char *uri)
{
    const char *p = strstr(uri, "://"), *end, *colon = NULL;
    p = p ? p + 3 : uri;
    end = strchr(p, '/');
    if (end == NULL)
        end = p + strlen(p);
    for (const char *q = p; q < end; q++)
        if (*q == ':')
            colon = q;
    if (colon == NULL || (strchr(p, ']') && colon < strchr(p, ']')))
        return -1;
    return atoi(colon + 1);
}

/* The socket created since `before` that talks to the broker (-1 if not
 * found); with nodelay, TCP_NODELAY is set on it. */
int
sb_find_broker_socket(const unsigned char *before, int nbits, const char *server_uri, int nodelay)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int port = server_uri ? uri_port(server_uri) : -1, found = -1;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        struct stat sb;
        int fd = atoi(e->d_name), type = 0, one = 1;
        socklen_t tl = sizeof type;
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || fstat(fd, &sb) != 0 || !S_ISSOCK(sb.st_mode))
            continue;
        if (before && fd < nbits && (before[fd / 8] & (1u << (fd % 8))))
            continue;   /* existed before connect: not paho's new socket */
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM)
            continue;
        if (port > 0 && peer_port(fd) != port)
            continue;
        if (nodelay)
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        found = fd;
    }
    closedir(d);
    return found;
}

/* Wait (up to timeout_ms) until the broker socket can take a write.  paho's
 * publish, finding a partly written packet, sleeps 100 ms at a time; waiting
 * for the kernel's send buffer to drain first avoids that.  No GIL needed. */
void
sb_wait_writable(int fd, int timeout_ms)
{
    struct pollfd p;
    p.fd = fd;
    p.events = POLLOUT;
    p.revents = 0;
    if (poll(&p, 1, 0) == 0)
        (void)poll(&p, 1, timeout_ms);
}
