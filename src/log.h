/* log.h — modelmux's own diagnostics: one timestamped line on stderr per
 * event (reloads, transitions, errors). Never on the per-request path; the
 * request log is reqlog.c. */
#ifndef MM_LOG_H
#define MM_LOG_H

#include "common.h"

void mm_log(const char *fmt, ...) MM_PRINTF(1, 2);

#endif
