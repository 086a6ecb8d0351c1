/* Per-client limits, keyed by the client's address: a token bucket per
 * address (request rate: POST /tsa) and a count per address (concurrent
 * connections, see http.h's http_guard).
 *
 * An IPv4 client is its address; an IPv6 client is its /64, because one host
 * is routinely handed a whole /64 and could otherwise pose as 2^64 clients.
 * Both tables are bounded (a named maximum of addresses), hashed with a
 * random SipHash key so a client cannot choose colliding addresses, and safe
 * to call from any thread. */
#ifndef QWICKD_RATELIMIT_H
#define QWICKD_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Addresses a bucket table tracks at most: 40 bytes each. Past it, buckets
 * that have refilled (their client went quiet) are dropped; if none has, a
 * new address is refused until one does. */
#define RATELIMIT_MAX_BUCKETS 65536u
#define RATELIMIT_MAX_RATE 1000000u
#define RATELIMIT_MAX_BURST 1000000u

typedef struct ratelimit_key {
    uint8_t b[16]; /* IPv4 as ::ffff:a.b.c.d; IPv6 as its /64 */
} ratelimit_key;

/* The key of a client address; -1 for a family other than IPv4/IPv6. An
 * IPv4-mapped IPv6 address (a dual-stack listener) is its IPv4 address. */
int ratelimit_key_of(const struct sockaddr *sa, ratelimit_key *out);

typedef struct ratelimit_buckets ratelimit_buckets;

/* `rate` tokens a second refill each address's bucket of `burst` tokens
 * (both 1..RATELIMIT_MAX_*); NULL when out of memory or out of range. */
ratelimit_buckets *ratelimit_buckets_new(unsigned rate, unsigned burst);
void ratelimit_buckets_free(ratelimit_buckets *b);
/* Takes one token from `k`'s bucket at `now_ms` (a monotonic clock): 1 when
 * there was one; 0 when not, with *retry_after_s the whole seconds (>= 1)
 * until there is. */
int ratelimit_take(ratelimit_buckets *b, const ratelimit_key *k, uint64_t now_ms,
                   unsigned *retry_after_s) __attribute__((warn_unused_result));

typedef struct ratelimit_counts ratelimit_counts;

/* Counts for at most `max_keys` addresses at once (>= 1). */
ratelimit_counts *ratelimit_counts_new(size_t max_keys);
void ratelimit_counts_free(ratelimit_counts *c);
/* Adds one to `k`'s count and returns the new count; 0 (nothing added) when
 * `max_keys` other addresses are counted already. */
unsigned ratelimit_count_add(ratelimit_counts *c, const ratelimit_key *k)
    __attribute__((warn_unused_result));
/* Takes one away (after a successful add); the address is forgotten at 0. */
void ratelimit_count_del(ratelimit_counts *c, const ratelimit_key *k);
/* The current count of `k` (0 when unknown). */
unsigned ratelimit_count_get(ratelimit_counts *c, const ratelimit_key *k);

#endif
