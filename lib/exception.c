/*
 * exception.c — the loop's exception handler: where every report of an
 * error nobody handled goes ("Task exception was never retrieved", ...),
 * and the default one, which logs it at ERROR.
 */
#include "future.h"

#include <stdio.h>

URIO_EXPORT void urio_loop_set_exception_handler(urio_loop_t *loop,
                                                 urio_exception_handler_fn fn, void *ud)
{
    if (loop == NULL || !urio__loop_check_thread(loop, "urio_loop_set_exception_handler"))
        return;
    loop->exc_fn = fn;
    loop->exc_ud = fn ? ud : NULL;
}

URIO_EXPORT void urio_loop_default_exception_handler(urio_loop_t *loop,
                                                     const urio_error_context_t *ctx)
{
    if (ctx == NULL)
        return;
    char obj[256] = "";
    if (ctx->future) {
        char desc[200];
        snprintf(obj, sizeof obj, "\nfuture: %s",
                 urio__future_describe(ctx->future, desc, sizeof desc));
    }
    char err[512] = "";
    if (ctx->error)
        snprintf(err, sizeof err, "\nerror: %s (%s)%s%s", urio_strerror_name(ctx->error),
                 urio_strerror(ctx->error), ctx->error_message ? ": " : "",
                 ctx->error_message ? ctx->error_message : "");
    /* Python says "Enable tracemalloc to get the object allocation traceback". */
    const char *hint = ctx->future && !ctx->source_traceback && !(loop && loop->debug)
                           ? "\nEnable debug mode (URIO_DEBUG=1) to get where it was created"
                           : "";
    urio__log(URIO_LOG_ERROR, "%s%s%s%s%s%s%s%s",
              ctx->message ? ctx->message : "Unhandled error", obj, err,
              ctx->source_traceback ? "\n" : "",
              ctx->source_traceback ? ctx->source_traceback : "",
              ctx->error_traceback ? "\n" : "",
              ctx->error_traceback ? ctx->error_traceback : "", hint);
}

URIO_EXPORT void urio_loop_call_exception_handler(urio_loop_t *loop,
                                                  const urio_error_context_t *ctx)
{
    if (loop != NULL && loop->exc_fn != NULL)
        loop->exc_fn(loop, ctx, loop->exc_ud);
    else
        urio_loop_default_exception_handler(loop, ctx);
}
