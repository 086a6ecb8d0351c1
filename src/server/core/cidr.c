#include "core/cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cidr_parse(const char *s, cidr *out)
{
    char host[64];
    const char *slash = strchr(s, '/');
    size_t hlen = slash != NULL ? (size_t)(slash - s) : strlen(s);
    memset(out, 0, sizeof(*out));
    if (hlen == 0 || hlen >= sizeof(host))
        return -1;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    if (inet_pton(AF_INET, host, out->addr) == 1)
        out->family = AF_INET;
    else if (inet_pton(AF_INET6, host, out->addr) == 1)
        out->family = AF_INET6;
    else
        return -1;
    unsigned max = out->family == AF_INET ? 32 : 128;
    out->bits = max;
    if (slash != NULL) {
        char *end = NULL;
        unsigned long b = strtoul(slash + 1, &end, 10);
        if (slash[1] < '0' || slash[1] > '9' || *end != '\0' || b > max)
            return -1;
        out->bits = (unsigned)b;
    }
    for (unsigned i = out->bits; i < max; i++) /* no host bits */
        if (out->addr[i / 8] & (0x80u >> (i % 8)))
            return -1;
    return 0;
}

static int prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

int cidr_match(const cidr *list, size_t n, const struct sockaddr *sa)
{
    uint8_t a[16];
    int family;
    if (sa == NULL)
        return 0;
    if (sa->sa_family == AF_INET) {
        memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        family = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        const uint8_t *p = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(p, mapped, 12) == 0) {
            memcpy(a, p + 12, 4);
            family = AF_INET;
        } else {
            memcpy(a, p, 16);
            family = AF_INET6;
        }
    } else {
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        if (list[i].family == family && prefix_equal(a, list[i].addr, list[i].bits))
            return 1;
    return 0;
}
