/* qwickd's per-client limits: address keys (IPv4, IPv6 /64, mapped), token
 * buckets (burst, refill, Retry-After, a full table), connection counts
 * (bounded, forgotten at zero, deletions keeping the table reachable), and
 * both under concurrent callers. */
#include <arpa/inet.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <cmocka.h>

#include "core/ratelimit.h"

static ratelimit_key v4(const char *a)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    ratelimit_key k;
    assert_int_equal(inet_pton(AF_INET, a, &sa.sin_addr), 1);
    assert_int_equal(ratelimit_key_of((const struct sockaddr *)&sa, &k), 0);
    return k;
}

static ratelimit_key v6(const char *a)
{
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    ratelimit_key k;
    assert_int_equal(inet_pton(AF_INET6, a, &sa.sin6_addr), 1);
    assert_int_equal(ratelimit_key_of((const struct sockaddr *)&sa, &k), 0);
    return k;
}

/* The n-th of many distinct IPv4 keys (10.0.0.0/8). */
static ratelimit_key nth(unsigned n)
{
    char a[32];
    snprintf(a, sizeof(a), "10.%u.%u.%u", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    return v4(a);
}

static int same(ratelimit_key a, ratelimit_key b)
{
    return memcmp(a.b, b.b, sizeof(a.b)) == 0;
}

static void keys(void **state)
{
    (void)state;
    /* Every IPv4 address is its own client: 127.0.0.1 is not 127.0.0.2. */
    assert_false(same(v4("127.0.0.1"), v4("127.0.0.2")));
    assert_true(same(v4("192.0.2.7"), v4("192.0.2.7")));
    /* An IPv6 client is its /64. */
    assert_true(same(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff:ffff:ffff:ffff")));
    assert_false(same(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1")));
    /* A dual-stack listener's mapped address is the IPv4 client. */
    assert_true(same(v6("::ffff:192.0.2.7"), v4("192.0.2.7")));
    assert_false(same(v6("::ffff:192.0.2.7"), v6("::ffff:192.0.2.8")));

    struct sockaddr_un un = {.sun_family = AF_UNIX};
    ratelimit_key k;
    assert_int_equal(ratelimit_key_of((const struct sockaddr *)&un, &k), -1);
    assert_int_equal(ratelimit_key_of(NULL, &k), -1);
}

static void bucket_limits(void **state)
{
    (void)state;
    assert_null(ratelimit_buckets_new(0, 5));
    assert_null(ratelimit_buckets_new(5, 0));
    assert_null(ratelimit_buckets_new(RATELIMIT_MAX_RATE + 1, 5));
    assert_null(ratelimit_buckets_new(5, RATELIMIT_MAX_BURST + 1));
}

static void burst_and_refill(void **state)
{
    (void)state;
    ratelimit_buckets *b = ratelimit_buckets_new(2, 5); /* 2 a second, 5 at once */
    assert_non_null(b);
    ratelimit_key a = v4("127.0.0.1"), other = v4("127.0.0.2");
    unsigned wait = 0;
    uint64_t t = 1000000;

    for (int i = 0; i < 5; i++)
        assert_int_equal(ratelimit_take(b, &a, t, &wait), 1);
    assert_int_equal(ratelimit_take(b, &a, t, &wait), 0);
    assert_int_equal(wait, 1); /* half a second, rounded up */
    /* Another address has its own bucket. */
    assert_int_equal(ratelimit_take(b, &other, t, &wait), 1);

    /* One token every 500 ms. */
    assert_int_equal(ratelimit_take(b, &a, t + 499, &wait), 0);
    assert_int_equal(ratelimit_take(b, &a, t + 500, &wait), 1);
    assert_int_equal(ratelimit_take(b, &a, t + 500, &wait), 0);
    /* A clock that steps back takes nothing and gives nothing. */
    assert_int_equal(ratelimit_take(b, &a, t, &wait), 0);
    assert_int_equal(ratelimit_take(b, &a, t + 1000, &wait), 1);

    /* A long silence refills to the burst, not beyond. */
    int n = 0;
    while (ratelimit_take(b, &a, t + 10000000, &wait))
        n++;
    assert_int_equal(n, 5);
    ratelimit_buckets_free(b);
}

static void slow_rate_retry_after(void **state)
{
    (void)state;
    ratelimit_buckets *b = ratelimit_buckets_new(1, 1);
    assert_non_null(b);
    ratelimit_key a = v6("2001:db8::1");
    unsigned wait = 0;
    assert_int_equal(ratelimit_take(b, &a, 50, &wait), 1);
    assert_int_equal(ratelimit_take(b, &a, 60, &wait), 0);
    assert_int_equal(wait, 1);
    assert_int_equal(ratelimit_take(b, &a, 1049, &wait), 0);
    assert_int_equal(ratelimit_take(b, &a, 1050, &wait), 1);
    ratelimit_buckets_free(b);
}

/* At RATELIMIT_MAX_BUCKETS addresses, all mid-burst, a new one is refused;
 * once they have refilled, their buckets make room for it. */
static void full_table(void **state)
{
    (void)state;
    ratelimit_buckets *b = ratelimit_buckets_new(1, 2);
    assert_non_null(b);
    unsigned wait = 0;
    for (unsigned i = 0; i < RATELIMIT_MAX_BUCKETS; i++) {
        ratelimit_key k = nth(i);
        assert_int_equal(ratelimit_take(b, &k, 0, &wait), 1);
    }
    ratelimit_key late = v4("192.0.2.1"), first = nth(0);
    assert_int_equal(ratelimit_take(b, &late, 10, &wait), 0);
    assert_int_equal(wait, 1);
    /* Known addresses still get their tokens meanwhile. */
    assert_int_equal(ratelimit_take(b, &first, 10, &wait), 1);
    /* Two seconds on, every other bucket is full again: room is made. */
    assert_int_equal(ratelimit_take(b, &late, 2000, &wait), 1);
    ratelimit_buckets_free(b);
}

static void counts(void **state)
{
    (void)state;
    assert_null(ratelimit_counts_new(0));
    ratelimit_counts *c = ratelimit_counts_new(2);
    assert_non_null(c);
    ratelimit_key a = v4("127.0.0.1"), b = v4("127.0.0.2"), x = v4("127.0.0.3");
    assert_int_equal(ratelimit_count_get(c, &a), 0);
    assert_int_equal(ratelimit_count_add(c, &a), 1);
    assert_int_equal(ratelimit_count_add(c, &a), 2);
    assert_int_equal(ratelimit_count_add(c, &b), 1);
    /* Two addresses at most: a third is not counted (the caller refuses). */
    assert_int_equal(ratelimit_count_add(c, &x), 0);
    assert_int_equal(ratelimit_count_get(c, &x), 0);
    assert_int_equal(ratelimit_count_add(c, &a), 3);
    ratelimit_count_del(c, &b);
    assert_int_equal(ratelimit_count_get(c, &b), 0);
    assert_int_equal(ratelimit_count_add(c, &x), 1);
    ratelimit_count_del(c, &a);
    assert_int_equal(ratelimit_count_get(c, &a), 2);
    ratelimit_counts_free(c);
}

/* Many addresses in and out in a scrambled order: every survivor keeps its
 * count (deletions shift probe runs back without losing anyone). */
static void counts_churn(void **state)
{
    (void)state;
    enum { N = 5000 };
    ratelimit_counts *c = ratelimit_counts_new(N);
    assert_non_null(c);
    for (unsigned i = 0; i < N; i++) {
        ratelimit_key k = nth(i);
        for (unsigned j = 0; j <= i % 3; j++)
            assert_int_equal(ratelimit_count_add(c, &k), j + 1);
    }
    for (unsigned s = 0; s < N; s++) {
        unsigned i = (s * 7919u) % N; /* a permutation: 7919 is a prime not dividing N */
        if (i % 2 == 0)
            continue;
        ratelimit_key k = nth(i);
        for (unsigned j = 0; j <= i % 3; j++)
            ratelimit_count_del(c, &k);
    }
    for (unsigned i = 0; i < N; i++) {
        ratelimit_key k = nth(i);
        assert_int_equal(ratelimit_count_get(c, &k), i % 2 ? 0 : i % 3 + 1);
    }
    ratelimit_counts_free(c);
}

typedef struct hammer_arg {
    ratelimit_buckets *b;
    ratelimit_counts *c;
    unsigned id;
    unsigned taken;
} hammer_arg;

static void *hammer(void *p)
{
    hammer_arg *h = p;
    ratelimit_key shared = v4("198.51.100.1"), own = nth(h->id);
    unsigned wait;
    for (unsigned i = 0; i < 20000; i++) {
        h->taken += (unsigned)ratelimit_take(h->b, &shared, 0, &wait);
        if (ratelimit_count_add(h->c, &shared) != 0)
            ratelimit_count_del(h->c, &shared);
        if (ratelimit_count_add(h->c, &own) != 0)
            ratelimit_count_del(h->c, &own);
    }
    return NULL;
}

/* No token is handed out twice and no count is lost under concurrency. */
static void concurrent(void **state)
{
    (void)state;
    enum { T = 4 };
    ratelimit_buckets *b = ratelimit_buckets_new(1, 1000);
    ratelimit_counts *c = ratelimit_counts_new(64);
    assert_non_null(b);
    assert_non_null(c);
    pthread_t th[T];
    hammer_arg a[T];
    for (unsigned i = 0; i < T; i++) {
        a[i] = (hammer_arg){b, c, i, 0};
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &a[i]), 0);
    }
    unsigned total = 0;
    for (unsigned i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        total += a[i].taken;
    }
    assert_int_equal(total, 1000); /* the burst, exactly: the clock stood still */
    ratelimit_key shared = v4("198.51.100.1");
    assert_int_equal(ratelimit_count_get(c, &shared), 0);
    ratelimit_buckets_free(b);
    ratelimit_counts_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(keys),
        cmocka_unit_test(bucket_limits),
        cmocka_unit_test(burst_and_refill),
        cmocka_unit_test(slow_rate_retry_after),
        cmocka_unit_test(full_table),
        cmocka_unit_test(counts),
        cmocka_unit_test(counts_churn),
        cmocka_unit_test(concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
