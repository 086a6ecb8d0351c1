/* Private helpers shared by libqwick's modules. Not installed. */
#ifndef QK_LIB_INTERNAL_H
#define QK_LIB_INTERNAL_H

#include <stddef.h>
#include "qwick/error.h"

/* qk_fail, qk_fail_ossl and qk_clear_detail are public (qwick/error.h). */

#define QK_ALIGN8(x) (((x) + 7u) & ~(uint64_t)7u)

#endif
