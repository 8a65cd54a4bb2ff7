/* refusal.h — "this config is refused, and the message points at the right
 * place": the check every policy's config tests make. Header-only: each
 * test_*.c is its own executable. */
#ifndef MM_TEST_REFUSAL_H
#define MM_TEST_REFUSAL_H

#include <stdio.h>
#include <string.h>

#include "config.h"

/* Parse `text` as "test.json" and require it refused with a message that
 * starts "test.json:LINE:COL: " and mentions `words`. LINE:COL is where
 * `needle` first occurs at or after `from` (a part of `text` — the
 * experiment, so a needle also found in the fixed head of the file is not
 * taken there), or else anywhere in `text`. */
static inline void expect_refused_at(const char *text, const char *from, const char *needle,
                                     const char *words)
{
    char err[512] = "", want[64];
    const char *hit = from != NULL ? strstr(from, needle) : NULL;
    if (hit == NULL) hit = strstr(text, needle);
    assert_non_null(hit);
    int line = 1, col = 1;
    for (const char *q = text; q < hit; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    config_t *cfg = config_parse(text, strlen(text), "test.json", err, sizeof err);
    if (cfg != NULL) {
        config_free(cfg);
        fail_msg("accepted: %s", text);
    }
    snprintf(want, sizeof want, "test.json:%d:%d: ", line, col);
    if (strncmp(err, want, strlen(want)) != 0) fail_msg("error \"%s\", want prefix %s", err, want);
    if (strstr(err, words) == NULL) fail_msg("error \"%s\" does not mention \"%s\"", err, words);
}

#endif
