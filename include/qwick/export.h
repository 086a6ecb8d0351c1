/* Symbol visibility: libqwick is built with -fvisibility=hidden, so only
 * declarations marked QK_EXPORT are part of the ABI. */
#ifndef QWICK_EXPORT_H
#define QWICK_EXPORT_H

#if defined(QWICK_BUILDING_LIB) && defined(__GNUC__)
#define QK_EXPORT __attribute__((visibility("default")))
#else
#define QK_EXPORT
#endif

#if defined(__GNUC__)
#define QK_WUR __attribute__((warn_unused_result))
#else
#define QK_WUR
#endif

#endif
