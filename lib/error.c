/*
 * error.c — names and texts of error codes.
 */
#include "common.h"

#include <stdio.h>
#include <string.h>

static const struct {
    int code;
    const char *name;
    const char *text;
} urio_codes[] = {
    { URIO_ENOTDONE, "URIO_ENOTDONE", "Future is not done yet" },
    { URIO_ENOURING, "URIO_ENOURING",
      "io_uring is unavailable (disabled by sysctl, blocked by seccomp, or not in the kernel)" },
    { URIO_ESTOPPED, "URIO_ESTOPPED", "Event loop stopped before the future completed" },
    { URIO_EBROKENWORKER, "URIO_EBROKENWORKER",
      "A process-pool worker died while running the job" },
    { URIO_EFORKED, "URIO_EFORKED",
      "The event loop belongs to the parent process (inherited through fork)" },
    { URIO_ENOHOST, "URIO_ENOHOST", "No such host" },
    { URIO_ELIMIT, "URIO_ELIMIT", "Separator not found within the limit" },
    { URIO_EINCOMPLETE, "URIO_EINCOMPLETE", "End of stream before the bytes asked for" },
};

static int find_code(int err)
{
    for (size_t i = 0; i < sizeof urio_codes / sizeof urio_codes[0]; i++)
        if (urio_codes[i].code == err)
            return (int)i;
    return -1;
}

URIO_EXPORT const char *urio_strerror(int err)
{
    static _Thread_local char unknown[48];
    if (err == 0)
        return "Success";
    int i = find_code(err);
    if (i >= 0)
        return urio_codes[i].text;
    if (err < 0 && err > -4096) {
        const char *d = strerrordesc_np(-err);
        if (d)
            return d;
    }
    snprintf(unknown, sizeof unknown, "Unknown error %d", err);
    return unknown;
}

URIO_EXPORT const char *urio_strerror_name(int err)
{
    if (err == 0)
        return "0";
    int i = find_code(err);
    if (i >= 0)
        return urio_codes[i].name;
    if (err < 0 && err > -4096) {
        const char *n = strerrorname_np(-err);
        if (n)
            return n;
    }
    return "E?";
}

int urio__error_code(int err, const char *fn)
{
    if (URIO_LIKELY(err <= 0))
        return err;
    urio__log(URIO_LOG_WARNING, "%s(): error codes are negative errno values (-EIO, not "
              "EIO): took %d as -%d (%s)", fn, err, err, urio_strerror_name(-err));
    return -err;
}
