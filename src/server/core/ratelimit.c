/* Per-client token buckets and connection counts (see ratelimit.h).
 *
 * Both are one open-addressing hash table (linear probing, kept at most half
 * full, backward-shift deletion) of address keys with two integers each,
 * behind a mutex: a lookup is a SipHash and a probe or two, far cheaper than
 * the work it guards. */
#include "core/ratelimit.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#define TABLE_MIN_CAP 64u
/* Buckets are held in thousandths of a token, so refills stay integers. */
#define MILLI 1000u
/* A full table is swept for refilled buckets at most this often. */
#define PRUNE_INTERVAL_MS 1000u

int ratelimit_key_of(const struct sockaddr *sa, ratelimit_key *out)
{
    memset(out, 0, sizeof(*out));
    if (sa == NULL)
        return -1;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)(const void *)sa;
        out->b[10] = out->b[11] = 0xff;
        memcpy(out->b + 12, &v4->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)(const void *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr))
            memcpy(out->b, &v6->sin6_addr, 16);
        else
            memcpy(out->b, &v6->sin6_addr, 8);
        return 0;
    }
    return -1;
}

typedef struct slot {
    ratelimit_key key;
    uint64_t a; /* buckets: thousandths of a token; counts: the count */
    uint64_t b; /* buckets: time of the last refill (ms) */
    int used;
} slot;

typedef struct table {
    pthread_mutex_t lock;
    unsigned char sipkey[crypto_shorthash_KEYBYTES];
    slot *s;
    size_t cap; /* a power of two */
    size_t n;
    size_t max; /* keys held at most */
} table;

static int table_init(table *t, size_t max)
{
    if (sodium_init() < 0)
        return -1;
    t->cap = TABLE_MIN_CAP;
    t->n = 0;
    t->max = max;
    t->s = calloc(t->cap, sizeof(slot));
    if (t->s == NULL)
        return -1;
    randombytes_buf(t->sipkey, sizeof(t->sipkey));
    pthread_mutex_init(&t->lock, NULL);
    return 0;
}

static void table_free(table *t)
{
    pthread_mutex_destroy(&t->lock);
    free(t->s);
}

static size_t home(const table *t, const ratelimit_key *k)
{
    uint64_t h;
    crypto_shorthash((unsigned char *)&h, k->b, sizeof(k->b), t->sipkey);
    return (size_t)h & (t->cap - 1);
}

/* The slot holding `k`, or the free slot where it would go. */
static size_t find(const table *t, const ratelimit_key *k)
{
    size_t i = home(t, k);
    while (t->s[i].used && memcmp(t->s[i].key.b, k->b, sizeof(k->b)) != 0)
        i = (i + 1) & (t->cap - 1);
    return i;
}

/* Empties slot i and moves later members of its probe run back, so every
 * key stays reachable from its home slot without tombstones. */
static void remove_at(table *t, size_t i)
{
    size_t mask = t->cap - 1, j = i;
    t->s[i].used = 0;
    t->n--;
    for (;;) {
        j = (j + 1) & mask;
        if (!t->s[j].used)
            return;
        size_t h = home(t, &t->s[j].key);
        /* s[j] stays when its home lies cyclically in (i, j]. */
        int stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
        if (stays)
            continue;
        t->s[i] = t->s[j];
        t->s[j].used = 0;
        i = j;
    }
}

/* Re-hashes every used slot that `keep` accepts into a table of `cap` slots. */
static int rebuild(table *t, size_t cap, int (*keep)(const slot *, const void *), const void *arg)
{
    slot *old = t->s;
    size_t oldcap = t->cap;
    slot *s = calloc(cap, sizeof(slot));
    if (s == NULL)
        return -1;
    t->s = s;
    t->cap = cap;
    t->n = 0;
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i].used || (keep != NULL && !keep(&old[i], arg)))
            continue;
        t->s[find(t, &old[i].key)] = old[i];
        t->n++;
    }
    free(old);
    return 0;
}

/* Room for one more key: grows when half full. -1 at `max` or out of memory. */
static int make_room(table *t)
{
    if (t->n >= t->max)
        return -1;
    if (2 * (t->n + 1) <= t->cap)
        return 0;
    return rebuild(t, t->cap * 2, NULL, NULL);
}

/* --- token buckets ------------------------------------------------------ */

struct ratelimit_buckets {
    table t;
    uint64_t rate; /* thousandths of a token per millisecond = tokens per second */
    uint64_t full; /* burst, in thousandths */
    uint64_t next_prune;
};

ratelimit_buckets *ratelimit_buckets_new(unsigned rate, unsigned burst)
{
    if (rate == 0 || rate > RATELIMIT_MAX_RATE || burst == 0 || burst > RATELIMIT_MAX_BURST)
        return NULL;
    ratelimit_buckets *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    if (table_init(&b->t, RATELIMIT_MAX_BUCKETS) != 0) {
        free(b);
        return NULL;
    }
    b->rate = rate;
    b->full = (uint64_t)burst * MILLI;
    return b;
}

void ratelimit_buckets_free(ratelimit_buckets *b)
{
    if (b == NULL)
        return;
    table_free(&b->t);
    free(b);
}

/* A bucket's level at `now`: what it held plus what has dripped in since. */
static uint64_t level(const ratelimit_buckets *b, const slot *s, uint64_t now)
{
    uint64_t dt = now > s->b ? now - s->b : 0;
    if (dt >= (b->full - s->a) / b->rate + 1)
        return b->full;
    uint64_t v = s->a + dt * b->rate;
    return v < b->full ? v : b->full;
}

typedef struct prune_arg {
    const ratelimit_buckets *b;
    uint64_t now;
} prune_arg;

/* A bucket that has refilled says nothing a new one would not: drop it. */
static int not_refilled(const slot *s, const void *arg)
{
    const prune_arg *p = arg;
    return level(p->b, s, p->now) < p->b->full;
}

int ratelimit_take(ratelimit_buckets *b, const ratelimit_key *k, uint64_t now_ms,
                   unsigned *retry_after_s)
{
    int ok = 0;
    *retry_after_s = 1;
    pthread_mutex_lock(&b->t.lock);
    size_t i = find(&b->t, k);
    if (!b->t.s[i].used) {
        if (b->t.n >= b->t.max && now_ms >= b->next_prune) {
            prune_arg p = {b, now_ms};
            b->next_prune = now_ms + PRUNE_INTERVAL_MS;
            (void)rebuild(&b->t, b->t.cap, not_refilled, &p);
        }
        /* Still full: every tracked client is mid-burst. Refusing the new
         * one keeps the cost bounded; refills free slots within a second. */
        if (make_room(&b->t) != 0)
            goto out;
        i = find(&b->t, k);
        b->t.s[i] = (slot){.key = *k, .a = b->full, .b = now_ms, .used = 1};
        b->t.n++;
    }
    slot *s = &b->t.s[i];
    s->a = level(b, s, now_ms);
    if (now_ms > s->b)
        s->b = now_ms;
    if (s->a >= MILLI) {
        s->a -= MILLI;
        ok = 1;
    } else {
        uint64_t ms = (MILLI - s->a + b->rate - 1) / b->rate;
        uint64_t sec = (ms + 999) / 1000;
        *retry_after_s = sec < 1 ? 1 : (unsigned)sec;
    }
out:
    pthread_mutex_unlock(&b->t.lock);
    return ok;
}

/* --- connection counts -------------------------------------------------- */

struct ratelimit_counts {
    table t;
};

ratelimit_counts *ratelimit_counts_new(size_t max_keys)
{
    if (max_keys == 0)
        return NULL;
    ratelimit_counts *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    if (table_init(&c->t, max_keys) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

void ratelimit_counts_free(ratelimit_counts *c)
{
    if (c == NULL)
        return;
    table_free(&c->t);
    free(c);
}

unsigned ratelimit_count_add(ratelimit_counts *c, const ratelimit_key *k)
{
    unsigned n = 0;
    pthread_mutex_lock(&c->t.lock);
    size_t i = find(&c->t, k);
    if (!c->t.s[i].used) {
        if (make_room(&c->t) != 0)
            goto out;
        i = find(&c->t, k);
        c->t.s[i] = (slot){.key = *k, .used = 1};
        c->t.n++;
    }
    n = (unsigned)++c->t.s[i].a;
out:
    pthread_mutex_unlock(&c->t.lock);
    return n;
}

void ratelimit_count_del(ratelimit_counts *c, const ratelimit_key *k)
{
    pthread_mutex_lock(&c->t.lock);
    size_t i = find(&c->t, k);
    if (c->t.s[i].used && --c->t.s[i].a == 0)
        remove_at(&c->t, i);
    pthread_mutex_unlock(&c->t.lock);
}

unsigned ratelimit_count_get(ratelimit_counts *c, const ratelimit_key *k)
{
    pthread_mutex_lock(&c->t.lock);
    size_t i = find(&c->t, k);
    unsigned n = c->t.s[i].used ? (unsigned)c->t.s[i].a : 0;
    pthread_mutex_unlock(&c->t.lock);
    return n;
}
