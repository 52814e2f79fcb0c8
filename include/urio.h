/*
 * urio — asyncio's developer experience for C, on Linux io_uring.
 *
 * The umbrella header: include this one.  Each subsystem has its own header
 * under urio/, in the order of the layers (docs/architecture.md): base types
 * and errors, the logger, the loop with its callbacks and timers, futures,
 * executors (the thread pool, the process pool), tasks, I/O (operations on the
 * ring; streams and servers).
 */
#ifndef URIO_H
#define URIO_H

#include "urio/base.h"
#include "urio/log.h"
#include "urio/loop.h"
#include "urio/future.h"
#include "urio/executor.h"
#include "urio/process_pool.h"
#include "urio/task.h"
#include "urio/io.h"
#include "urio/stream.h"

#endif
