/* PE/COFF images: parse, Authenticode digest, certificate table, signed write-out.
 *
 * A qk_pe is a read-only view over a file (mmapped by qk_pe_open) or over
 * caller-owned memory (qk_pe_parse_mem, which borrows the buffer: it must
 * outlive the qk_pe). Every offset is validated at parse time. */
#ifndef QWICK_PE_H
#define QWICK_PE_H

#include <stddef.h>
#include <stdint.h>
#include "qwick/buf.h"
#include "qwick/error.h"
#include "qwick/export.h"
#include "qwick/hash.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest PE file accepted (PE offsets are 32-bit). */
#define QK_PE_MAX_SIZE ((uint64_t)UINT32_MAX)
/* Largest single certificate table. */
#define QK_PE_MAX_CERT_TABLE (64u * 1024u * 1024u)

#define QK_WIN_CERT_REVISION_2_0 0x0200
#define QK_WIN_CERT_TYPE_PKCS_SIGNED_DATA 0x0002

typedef struct qk_pe qk_pe;

/* One WIN_CERTIFICATE entry; data points into the image (bCertificate, without padding). */
typedef struct qk_pe_cert {
    uint32_t length; /* dwLength as stored (header + data + padding) */
    uint16_t revision;
    uint16_t type;
    qk_slice data;
} qk_pe_cert;

QK_EXPORT QK_WUR qk_err qk_pe_open(const char *path, qk_pe **out);
QK_EXPORT QK_WUR qk_err qk_pe_parse_mem(const uint8_t *data, size_t len, qk_pe **out);
QK_EXPORT void qk_pe_free(qk_pe *pe);

QK_EXPORT const uint8_t *qk_pe_data(const qk_pe *pe);
QK_EXPORT size_t qk_pe_size(const qk_pe *pe);
QK_EXPORT int qk_pe_is_pe32plus(const qk_pe *pe);
QK_EXPORT uint16_t qk_pe_machine(const qk_pe *pe);
QK_EXPORT uint32_t qk_pe_stored_checksum(const qk_pe *pe);
/* PE checksum as it would be computed for the file's current bytes. */
QK_EXPORT uint32_t qk_pe_compute_checksum(const qk_pe *pe);

/* Certificate table location (file offset and size) or 0,0 when unsigned. */
QK_EXPORT void qk_pe_cert_table(const qk_pe *pe, uint32_t *offset, uint32_t *size);
QK_EXPORT size_t qk_pe_cert_count(const qk_pe *pe);
QK_EXPORT const qk_pe_cert *qk_pe_cert_get(const qk_pe *pe, size_t index);

/* The Authenticode image digest with the given algorithm, as a verifier
 * computes it for the file as it is (unsigned files include the zero padding
 * to 8 bytes a signer adds). out must hold qk_hash_size(alg) bytes. */
QK_EXPORT QK_WUR qk_err qk_pe_digest(const qk_pe *pe, qk_hash_alg alg, uint8_t *out);
/* The digest of the image as qk_pe_write_signed will lay it out (existing
 * table stripped, end padded to 8): what a new signature must cover. Equal to
 * qk_pe_digest for unsigned files and for signed files with an aligned table. */
QK_EXPORT QK_WUR qk_err qk_pe_signing_digest(const qk_pe *pe, qk_hash_alg alg, uint8_t *out);

/* Writes the image with its certificate table replaced by `n` PKCS#7
 * ContentInfo entries (n == 0 strips all signatures): old table truncated,
 * unsigned images zero-padded to 8 bytes, each entry 8-byte padded with the
 * padding counted in dwLength, directory updated, checksum recomputed.
 * Atomic: writes a temporary file beside `path`, fsyncs, renames; keeps the
 * permissions of an existing `path`; on failure `path` is untouched. A `path`
 * that is a symbolic link is followed: the file it names is replaced, in its
 * own directory (a dangling link is an error). Hard links to the old file
 * keep the old content (a new inode replaces it). */
QK_EXPORT QK_WUR qk_err qk_pe_write_signed(const qk_pe *pe, const qk_slice *sigs, size_t n,
                                           const char *path);
/* Two-phase form of qk_pe_write_signed, so the caller can check the result
 * before it replaces anything: begin writes and fsyncs a temporary file beside
 * `path` (qk_pe_pending_path), commit renames it over `path`, abort removes it.
 * Exactly one of commit/abort must be called; both free `p`. */
typedef struct qk_pe_pending qk_pe_pending;
QK_EXPORT QK_WUR qk_err qk_pe_write_signed_begin(const qk_pe *pe, const qk_slice *sigs, size_t n,
                                                 const char *path, qk_pe_pending **out);
QK_EXPORT const char *qk_pe_pending_path(const qk_pe_pending *p);
QK_EXPORT QK_WUR qk_err qk_pe_pending_commit(qk_pe_pending *p);
/* qk_pe_pending_commit without the fsync of the directory: the rename is
 * durable only once the caller has fsynced the directory of `path` (which
 * lets it cover many renames with one fsync). Frees `p`. */
QK_EXPORT QK_WUR qk_err qk_pe_pending_rename(qk_pe_pending *p);
QK_EXPORT void qk_pe_pending_abort(qk_pe_pending *p);

/* Same layout into memory (for small images, tests and fuzzing). */
QK_EXPORT QK_WUR qk_err qk_pe_build_signed(const qk_pe *pe, const qk_slice *sigs, size_t n,
                                           qk_buf *out);

#ifdef __cplusplus
}
#endif
#endif
