/*
 * urio/log.h — the `urio` logger.
 *
 * One process-wide logger named "urio", like asyncio's "asyncio" logger.
 * Level INFO by default, or from URIO_LOG_LEVEL (debug, info, warning,
 * error, critical, or a number) read once, at the first message or call;
 * any other value is ignored with a WARNING that says so.
 */
#ifndef URIO_LOG_H
#define URIO_LOG_H

#include "base.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    URIO_LOG_DEBUG    = 10,
    URIO_LOG_INFO     = 20,
    URIO_LOG_WARNING  = 30,
    URIO_LOG_ERROR    = 40,
    URIO_LOG_CRITICAL = 50,
};

/*
 * Sets the level below which messages are dropped, before any handler.
 * Thread: any thread.
 */
URIO_EXPORT void urio_log_set_level(int level);
URIO_EXPORT int  urio_log_get_level(void);

/*
 * A handler receives every message at or above the level: the level, the
 * message without a trailing newline (it may hold several lines), and ud.
 * It may be called from any thread, at the same time from several.
 */
typedef void (*urio_log_handler_fn)(int level, const char *message, void *ud);

/*
 * Routes urio's messages to fn; NULL restores the default handler, which
 * writes "2026-11-24 21:30:48.123 WARNING urio: <message>" to stderr with
 * one write(2) per message.
 * Thread: any thread.  A message being handled while the handler changes
 * may still reach the old one.
 */
URIO_EXPORT void urio_log_set_handler(urio_log_handler_fn fn, void *ud);

/*
 * Logs a message on the urio logger, as urio itself does: for services and
 * extensions that want their lines in the same stream.
 * Thread: any thread.
 */
URIO_EXPORT void urio_log(int level, const char *fmt, ...) URIO_PRINTF(2, 3);

/*
 * The name of a level: "DEBUG", "INFO", ..., or "Level 15" for a level
 * without a name (in a thread-local buffer, valid until the next call).
 */
URIO_EXPORT const char *urio_log_level_name(int level);

#ifdef __cplusplus
}
#endif
#endif
