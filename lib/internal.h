/* Private helpers shared by libqwick's modules. Not installed. */
#ifndef QK_LIB_INTERNAL_H
#define QK_LIB_INTERNAL_H

#include <stddef.h>
#include "qwick/error.h"

/* Records a printf-style detail for `err` on this thread and returns `err`,
 * so call sites read `return qk_fail(QK_ERR_X, "what %s", why);`. */
qk_err qk_fail(qk_err err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like qk_fail, appending OpenSSL's error queue (which it then clears). */
qk_err qk_fail_ossl(qk_err err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clears this thread's error detail. */
void qk_clear_detail(void);

#define QK_ALIGN8(x) (((x) + 7u) & ~(uint64_t)7u)

#endif
