/* Thread-local error messages (see error.h). Messages are bounded; a longer one
 * is cut, never overflowed. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define VF_ERROR_CAP 2048

static _Thread_local char g_message[VF_ERROR_CAP];

vf_status vf_error(vf_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_message, sizeof g_message, fmt, ap);
    va_end(ap);
    return st;
}

vf_status vf_error_prefix(vf_status st, const char *fmt, ...)
{
    char old[VF_ERROR_CAP];
    va_list ap;
    memcpy(old, g_message, sizeof old);
    va_start(ap, fmt);
    int n = vsnprintf(g_message, sizeof g_message, fmt, ap);
    va_end(ap);
    size_t at = n < 0 ? 0 : (size_t)n;
    if (at >= sizeof g_message - 1 || !old[0])
        return st;
    /* "<prefix>: <old message>", cut at the cap */
    size_t room = sizeof g_message - 1 - at;
    size_t len = strlen(old) + 2;
    char *dst = g_message + at;
    memcpy(dst, ": ", room < 2 ? room : 2);
    if (room > 2)
        memcpy(dst + 2, old, (len < room ? len : room) - 2);
    g_message[at + (len < room ? len : room)] = '\0';
    return st;
}

void vf_clear_error(void) { g_message[0] = '\0'; }

const char *vf_last_error(void) { return g_message; }

const char *vf_status_str(vf_status st)
{
    switch (st) {
    case VF_OK: return "ok";
    case VF_ERR_INVALID_ARG: return "invalid argument";
    case VF_ERR_IO: return "i/o error";
    case VF_ERR_FORMAT: return "malformed file";
    case VF_ERR_NOT_FOUND: return "not found";
    case VF_ERR_SHAPE: return "wrong tensor shape";
    case VF_ERR_UNSUPPORTED: return "unsupported";
    case VF_ERR_NO_MEMORY: return "out of memory";
    case VF_ERR_DEVICE: return "device error";
    case VF_ERR_BUDGET: return "does not fit the memory budget";
    case VF_ERR_CANCELLED: return "cancelled";
    case VF_ERR_INTERNAL: return "internal error";
    case VF_ERR_NONFINITE: return "non-finite values";
    }
    return "unknown status";
}

const char *vf_version(void) { return "0.1.0"; }
