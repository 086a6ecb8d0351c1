/* IANA time zones for policies such as signing hours: reads the system's
 * compiled zone files (TZif, RFC 8536 / RFC 9636, versions 1 to 4) itself,
 * footer rule (a POSIX TZ string) included, so the local time in any zone is
 * known from any thread without touching the process's TZ (no setenv, tzset
 * or localtime). A loaded zone is immutable: share it between threads. */
#ifndef QWICKD_TZ_H
#define QWICKD_TZ_H

#include <stddef.h>
#include <stdint.h>

/* The largest TZif file tz_parse accepts (real ones are a few KB). */
#define TZ_MAX_FILE (1024u * 1024u)
/* The longest zone name tz_load accepts ("America/Argentina/ComodRivadavia" is 32). */
#define TZ_MAX_NAME 64u

typedef struct tz tz;

/* Loads the IANA zone `name` ("Europe/Berlin", "America/New_York", "UTC") from
 * $TZDIR if set, else /usr/share/zoneinfo; "UTC" is built in and needs no file.
 * The name is checked before any file is opened: 1..TZ_MAX_NAME bytes,
 * components of [A-Za-z0-9_+-] separated by single '/', none empty (so no
 * leading '/', no "." or ".."). 0 with *out, or -1 with *err a malloc'd
 * message naming the zone ("unknown time zone \"Mars/Base\""). */
int tz_load(const char *name, tz **out, char **err) __attribute__((warn_unused_result));
/* Parses a TZif image of at most TZ_MAX_FILE bytes: the 64-bit block of a
 * version 2+ file (the 32-bit one of a version 1 file), every count checked
 * against the data, and the footer's POSIX TZ string
 * ("CET-1CEST,M3.5.0,M10.5.0/3") used after the last transition. Files with
 * leap-second records ("right/" zones) are refused: unix time has none.
 * Same convention as tz_load (the message names no zone). */
int tz_parse(const uint8_t *data, size_t len, tz **out, char **err)
    __attribute__((warn_unused_result));
void tz_free(tz *z);
/* Seconds east of UTC in force at unix time t (within +-26 h). */
long tz_offset(const tz *z, int64_t t);
/* The local weekday (0 = Sunday .. 6) and minutes since local midnight
 * (0..1439) at unix time t. */
void tz_local(const tz *z, int64_t t, int *wday, int *minute_of_day);

#endif
