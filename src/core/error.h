/* Errors: one thread-local message per thread, set where the fault is found.
 *
 * Library functions return a vf_status and, on failure, leave a message here that
 * names the file, tensor or argument at fault. vf_error() formats the message and
 * returns the status so that a failure is one line: return vf_error(VF_ERR_IO, ...).
 * When a caller adds context it prefixes the existing message with vf_error_prefix().
 */
#ifndef VF_CORE_ERROR_H
#define VF_CORE_ERROR_H

#include "vramfit.h"

#if defined(__GNUC__)
#define VF_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define VF_PRINTF(a, b)
#endif

vf_status vf_error(vf_status st, const char *fmt, ...) VF_PRINTF(2, 3);
/* Prepends "<context>: " to the current message and returns st. */
vf_status vf_error_prefix(vf_status st, const char *fmt, ...) VF_PRINTF(2, 3);
void vf_clear_error(void);

#define VF_TRY(expr)                     \
    do {                                 \
        vf_status vf_try_st_ = (expr);   \
        if (vf_try_st_ != VF_OK)         \
            return vf_try_st_;           \
    } while (0)

#endif
