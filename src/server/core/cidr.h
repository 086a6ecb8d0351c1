/* IPv4 and IPv6 address ranges ("10.0.0.0/8", "2001:db8::/32", or a bare
 * address: a /32 or /128), and whether an address falls in one. */
#ifndef QWICKD_CIDR_H
#define QWICKD_CIDR_H

#include <stdint.h>
#include <sys/socket.h>

typedef struct cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned bits;
} cidr;

/* 0 with *out filled, -1 when `s` is not a range (host bits set are refused:
 * "10.0.0.1/8" is a typo more often than a wish). */
int cidr_parse(const char *s, cidr *out);
/* Whether the socket address is inside one of the n ranges (an IPv4-mapped
 * IPv6 address counts as its IPv4 address). */
int cidr_match(const cidr *list, size_t n, const struct sockaddr *sa);

#endif
