/*
 * executor.c — the calls every executor answers, whatever its kind.
 */
#include "executor.h"

URIO_EXPORT int urio_executor_shutdown(urio_executor_t *ex, bool wait, bool cancel_futures)
{
    if (ex == NULL)
        return -EINVAL;
    return ex->ops->shutdown(ex, wait, cancel_futures);
}

URIO_EXPORT void urio_executor_free(urio_executor_t *ex)
{
    if (ex != NULL)
        ex->ops->free(ex);
}
