/* Fuzzes qwickd's parser of signing policies (policy_parse: jansson under
 * strict options, then every member's checks, the time zone's name
 * included). Invariants: a refused document names a 400 invalid_policy and
 * a message; an accepted one prints a canonical form that parses again to
 * the same form, and can judge requests (any address family, any time). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "policy/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    policy *p = NULL;
    api_error e;
    if (policy_parse(data, size, &p, &e) != 0) {
        FUZZ_CHECK(p == NULL);
        FUZZ_CHECK(e.status == 400 && e.message[0] != '\0');
        return 0;
    }
    char *canon = policy_canonical(p);
    policy *again = NULL;
    FUZZ_CHECK(policy_parse((const uint8_t *)canon, strlen(canon), &again, &e) == 0);
    char *canon2 = policy_canonical(again);
    FUZZ_CHECK(strcmp(canon, canon2) == 0);

    struct sockaddr_in v4 = {.sin_family = AF_INET};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET, "10.1.2.3", &v4.sin_addr);
    inet_pton(AF_INET6, "2001:db8::7", &v6.sin6_addr);
    const struct sockaddr *addrs[] = {(struct sockaddr *)&v4, (struct sockaddr *)&v6, NULL};
    static const char *const formats[] = {"authenticode-pe", "cms", "raw"};
    static const int64_t times[] = {0, 1767571200, 1767571200 + 7 * 3600, 4102444800, -1};
    for (size_t a = 0; a < 3; a++)
        for (size_t t = 0; t < sizeof(times) / sizeof(times[0]); t++) {
            policy_request r = {.addr = addrs[a],
                                .now = times[t],
                                .filename = t % 2 ? "app.exe" : NULL,
                                .format = formats[t % 3],
                                .alg = QK_HASH_SHA256,
                                .has_justification = (int)(a % 2)};
            policy_decision d;
            policy_check(p, &r, &d);
            FUZZ_CHECK(d.rule != NULL);
            FUZZ_CHECK(d.allowed || (d.code != NULL && (d.status == 400 || d.status == 403)));
        }
    free(canon2);
    free(canon);
    policy_free(again);
    policy_free(p);
    return 0;
}
