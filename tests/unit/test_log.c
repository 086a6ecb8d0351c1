/* qwickd's logfmt lines (src/server/log.c): quoting that stops a client value
 * from forging fields, truncation, and the buffered mode's ordering and
 * flushing guarantees. stderr is pointed at a temporary file. */
#include "tmpdir.h"

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/log.h"

static char *dir;
static char path[4096];
static int saved_stderr = -1;

static int setup(void **state)
{
    (void)state;
    dir = tmpdir_new();
    snprintf(path, sizeof(path), "%s/stderr.log", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    if (fd < 0)
        return -1;
    saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    log_buffered_stop();
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    tmpdir_free(dir);
    return 0;
}

/* What has been written to "stderr" so far (malloc'd, NUL-terminated). */
static char *contents(void)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static size_t count(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static void truncate_log(void)
{
    assert_int_equal(ftruncate(STDERR_FILENO, 0), 0);
}

static void test_quoting(void **state)
{
    (void)state;
    truncate_log();
    log_kv(LOG_INFO, "request", "path", "/api/v1/sign/digest", "file", "my app.exe", "evil",
           "x level=error msg=forged", "q", "say \"hi\"\\", "nl", "a\nb", "empty", "", NULL);
    char *s = contents();
    assert_non_null(strstr(s, " level=info msg=request path=/api/v1/sign/digest "));
    assert_non_null(strstr(s, " file=\"my app.exe\""));
    assert_non_null(strstr(s, " evil=\"x level=error msg=forged\""));
    assert_non_null(strstr(s, " q=\"say \\\"hi\\\"\\\\\""));
    assert_non_null(strstr(s, " nl=\"a\\nb\""));
    assert_non_null(strstr(s, " empty=\"\"\n"));
    assert_int_equal(count(s, "\n"), 1); /* one line, whatever the values held */
    assert_int_equal(strncmp(s, "ts=", 3), 0);
    free(s);
}

static void test_long_value_cut(void **state)
{
    (void)state;
    truncate_log();
    char *big = malloc(10000);
    assert_non_null(big);
    memset(big, 'a', 9999);
    big[9999] = '\0';
    log_kv(LOG_INFO, "big", "v", big, NULL);
    char *s = contents();
    assert_true(strlen(s) <= 4096);
    assert_int_equal(count(s, "\n"), 1);
    assert_non_null(strstr(s, " truncated=1\n"));
    free(s);
    free(big);
}

static void test_level_filter(void **state)
{
    (void)state;
    truncate_log();
    log_kv(LOG_DEBUG, "hidden", NULL);
    log_set_level(LOG_DEBUG);
    log_kv(LOG_DEBUG, "shown", NULL);
    log_set_level(LOG_INFO);
    char *s = contents();
    assert_null(strstr(s, "msg=hidden"));
    assert_non_null(strstr(s, "level=debug msg=shown"));
    free(s);
}

/* A warn line is written at once, after every buffered line before it. */
static void test_buffered_warn_flushes_in_order(void **state)
{
    (void)state;
    truncate_log();
    log_buffered_start();
    log_kv(LOG_INFO, "first", NULL);
    log_kv(LOG_INFO, "second", NULL);
    log_kv(LOG_WARN, "trouble", NULL);
    char *s = contents(); /* no stop, no wait: the warn forced the write */
    char *a = strstr(s, "msg=first"), *b = strstr(s, "msg=second"), *c = strstr(s, "msg=trouble");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    assert_true(a < b && b < c);
    free(s);
    log_buffered_stop();
}

/* More than the buffer holds, from several threads' worth of lines: after
 * the stop every line is there, whole and in order. */
static void test_buffered_overflow_and_stop(void **state)
{
    (void)state;
    truncate_log();
    log_buffered_start();
    char n[16];
    for (int i = 0; i < 3000; i++) {
        snprintf(n, sizeof(n), "%d", i);
        log_kv(LOG_INFO, "request", "n", n, "pad", "................................", NULL);
    }
    log_buffered_stop();
    char *s = contents();
    assert_int_equal(count(s, "\n"), 3000);
    assert_true(strlen(s) > 64 * 1024); /* the buffer had to be written while full */
    const char *p = s;
    for (int i = 0; i < 3000; i++) {
        char want[32];
        snprintf(want, sizeof(want), " n=%d pad=", i);
        const char *q = strstr(p, want);
        if (q == NULL)
            fail_msg("line %d missing or out of order", i);
        p = q;
    }
    free(s);
    /* Back to direct writes: a line is there at once. */
    log_kv(LOG_INFO, "direct", NULL);
    s = contents();
    assert_non_null(strstr(s, "msg=direct"));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quoting),
        cmocka_unit_test(test_long_value_cut),
        cmocka_unit_test(test_level_filter),
        cmocka_unit_test(test_buffered_warn_flushes_in_order),
        cmocka_unit_test(test_buffered_overflow_and_stop),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
