/*
 * examples/debug/logging.c — the urio logger: INFO by default (or
 * URIO_LOG_LEVEL), its level set by the program, its messages routed into
 * the program's own logging by a handler.
 */
#include <stdio.h>
#include <urio.h>

static void my_handler(int level, const char *message, void *ud)
{
    printf("[%s] %s: %s\n", (const char *)ud, urio_log_level_name(level), message);
}

int main(void)
{
    printf("level: %s\n", urio_log_level_name(urio_log_get_level()));
    urio_log_set_handler(my_handler, "myapp");
    urio_log(URIO_LOG_INFO, "shown: INFO is the default level");
    urio_log_set_level(URIO_LOG_WARNING);   /* logging.getLogger("asyncio").setLevel(logging.WARNING) */
    urio_log(URIO_LOG_INFO, "not shown");
    urio_log(URIO_LOG_WARNING, "shown: at WARNING and above");
    urio_log_set_handler(NULL, NULL);       /* back to stderr */
    return 0;
}
