/* test_config_fuzz.c — seeded mutation fuzz of the config checker.
 *
 * Every example config in config/ is mutated at random (bytes flipped,
 * inserted, deleted, spans cut or doubled, numbers and strings swapped for
 * awkward values) and handed to config_parse, as `modelmux --check` would.
 * Whatever the input, the parser must not crash, hang or leak (the
 * sanitizer build runs this too), and every rejection must read
 * "FILE:LINE:COL: message" with LINE and COL inside the text, since that is
 * where an editor jumps, on one line without control characters.
 *
 * Deterministic: the seed is fixed, so a failure reproduces. The default
 * count keeps the test fast; MM_CONFIG_FUZZ_N=100000 runs a long one by
 * hand (MM_CONFIG_FUZZ_SEED picks another seed, MM_CONFIG_FUZZ_VERBOSE
 * prints every message, to read them). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "config.h"

#define FUZZ_DEFAULT_N 400 /* mutants per example config */
#define MUT_MAX        (1u << 20)

static uint64_t rng_state;

static uint64_t next(void)
{
    /* splitmix64: small, and its sequence is fixed for a seed */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static size_t below(size_t n)
{
    return n ? (size_t)(next() % n) : 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    char *buf = malloc(MUT_MAX);
    assert_non_null(buf);
    *len = fread(buf, 1, MUT_MAX / 4, f);
    fclose(f);
    return buf;
}

/* Values users get wrong, and values parsers get wrong. */
static const char *const numbers[] = {"-1",
                                      "0",
                                      "-0",
                                      "1e400",
                                      "1.5",
                                      "-0.0",
                                      "1e-400",
                                      "99999999999999999999",
                                      "9223372036854775807",
                                      "-9223372036854775808",
                                      "2147483648",
                                      "65536",
                                      "1e9",
                                      "1e15",
                                      "0.5",
                                      "3e5",
                                      "\"1\"",
                                      "null",
                                      "true",
                                      "[]",
                                      "{}"};
static const char *const strings[] = {"\"\"",
                                      "\"x\"",
                                      "\"http://[::1]:0\"",
                                      "\"https://a:1\"",
                                      "\"127.0.0.1:0\"",
                                      "\"[::1]:8080\"",
                                      "\"\\u0000\"",
                                      "\"\\ud800\"",
                                      "\"a b\"",
                                      "\"champion\"",
                                      "\"challenger\"",
                                      "\"ab\"",
                                      "\"/\"",
                                      "\"\xff\"",
                                      "\"\xc3\xa9\"",
                                      "1",
                                      "null",
                                      "{}",
                                      "[\"champion\"]",
                                      "{\"champion\": 1}"};
static const char bytes[] = "{}[]\":,\\ \n\t\r0123456789-+.eE/*\xef\xbb\xbf\xff\x80\x00";

/* One random edit of buf (len bytes, room for MUT_MAX). */
static void mutate(char *buf, size_t *len)
{
    size_t n = *len, at = below(n + 1);
    switch (below(8)) {
    case 0: /* flip a bit */
        if (n) buf[below(n)] ^= (char)(1u << below(8));
        break;
    case 1: /* insert a byte JSON cares about */
        if (n + 1 < MUT_MAX) {
            memmove(buf + at + 1, buf + at, n - at);
            buf[at] = bytes[below(sizeof(bytes) - 1)];
            (*len)++;
        }
        break;
    case 2: /* delete a byte */
        if (at < n) {
            memmove(buf + at, buf + at + 1, n - at - 1);
            (*len)--;
        }
        break;
    case 3: { /* cut a span */
        size_t k = below(n - at + 1);
        if (k > 64) k = 64;
        memmove(buf + at, buf + at + k, n - at - k);
        *len -= k;
        break;
    }
    case 4: { /* double a span */
        size_t k = below(n - at + 1);
        if (k > 64) k = 64;
        if (n + k < MUT_MAX) {
            memmove(buf + at + k, buf + at, n - at);
            *len += k;
        }
        break;
    }
    case 5: /* truncate */
        *len = at;
        break;
    default: { /* replace a token (a number, or a string) by an awkward value */
        const char *rep;
        size_t s = at, e;
        if (below(2)) {
            while (s < n && !(buf[s] == '-' || (buf[s] >= '0' && buf[s] <= '9'))) s++;
            e = s;
            while (e < n && strchr("0123456789+-.eE", buf[e])) e++;
            rep = numbers[below(sizeof(numbers) / sizeof(*numbers))];
        } else {
            while (s < n && buf[s] != '"') s++;
            e = s + 1;
            while (e < n && buf[e] != '"') e += buf[e] == '\\' ? 2 : 1;
            if (e < n) e++;
            if (e > n) e = n;
            rep = strings[below(sizeof(strings) / sizeof(*strings))];
        }
        if (s >= n) break;
        size_t rn = strlen(rep);
        if (n - (e - s) + rn >= MUT_MAX) break;
        memmove(buf + s + rn, buf + e, n - e);
        memcpy(buf + s, rep, rn);
        *len = n - (e - s) + rn;
        break;
    }
    }
}

/* Lines in text, and the length in bytes of line `l` (1-based): a column
 * counts characters, so it can be at most bytes + 1 (just past the end). */
static void text_shape(const char *t, size_t len, int l, int *nlines, size_t *line_bytes)
{
    int cur = 1;
    size_t bytes_on_line = 0;
    *line_bytes = 0;
    for (size_t i = 0; i < len; i++) {
        if (t[i] == '\n') {
            if (cur == l) *line_bytes = bytes_on_line;
            cur++;
            bytes_on_line = 0;
        } else {
            bytes_on_line++;
        }
    }
    if (cur == l) *line_bytes = bytes_on_line;
    *nlines = cur;
}

static void check_rejection(const char *text, size_t len, const char *err)
{
    static const char name[] = "fuzz.json:";
    int line = 0, col = 0, off = 0;
    if (strncmp(err, name, sizeof(name) - 1) != 0 ||
        sscanf(err + sizeof(name) - 1, "%d:%d: %n", &line, &col, &off) != 2 || off == 0 ||
        err[sizeof(name) - 1 + (size_t)off] == '\0')
        fail_msg("not \"FILE:LINE:COL: message\": %s", err);
    if (strstr(err, "out of memory") != NULL) /* nothing here runs out */
        fail_msg("a wrong reason: %s", err);
    for (const char *c = err; *c; c++) /* one line, nothing a terminal would act on */
        if ((unsigned char)*c < 0x20 || *c == 0x7f) fail_msg("control character in: %s", err);
    int nlines;
    size_t line_bytes;
    text_shape(text, len, line, &nlines, &line_bytes);
    if (line < 1 || line > nlines || col < 1 || (size_t)col > line_bytes + 1)
        fail_msg("position %d:%d is outside the text (%d lines, line %d has %zu bytes): %s", line,
                 col, nlines, line, line_bytes, err);
}

static void fuzz_file(const char *file)
{
    const char *src = getenv("MM_SOURCE_DIR");
    const char *ns = getenv("MM_CONFIG_FUZZ_N"), *ss = getenv("MM_CONFIG_FUZZ_SEED");
    long n = ns ? atol(ns) : FUZZ_DEFAULT_N;
    int verbose = getenv("MM_CONFIG_FUZZ_VERBOSE") != NULL; /* print every rejection */
    char path[1024], err[1024];
    snprintf(path, sizeof(path), "%s/config/%s", src ? src : ".", file);
    size_t orig_len = 0;
    char *orig = read_file(path, &orig_len);
    if (orig == NULL) fail_msg("cannot read %s", path);
    char *buf = malloc(MUT_MAX);
    assert_non_null(buf);
    rng_state = (ss ? strtoull(ss, NULL, 10) : 20240611u) ^ (uint64_t)orig_len;
    long rejected = 0;
    for (long i = 0; i < n; i++) {
        size_t len = orig_len;
        memcpy(buf, orig, len);
        for (size_t k = 1 + below(4); k > 0; k--) mutate(buf, &len);
        config_t *c = config_parse(buf, len, "fuzz.json", err, sizeof(err));
        if (c != NULL) {
            config_free(c);
            continue;
        }
        rejected++;
        if (verbose) printf("%s\n", err);
        check_rejection(buf, len, err);
    }
    /* Most mutants break something; if none did, the mutator is broken. */
    assert_true(n == 0 || rejected > 0);
    free(buf);
    free(orig);
}

#define FUZZ(file)                                                                                 \
    static void test_fuzz_##file(void **state)                                                     \
    {                                                                                              \
        fuzz_file(#file ".json");                                                                  \
    }
FUZZ(modelmux)
FUZZ(ab)
FUZZ(canary)
FUZZ(shadow)
FUZZ(thompson)
FUZZ(epsilon_greedy)
FUZZ(ucb1)
FUZZ(interleave)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fuzz_modelmux), cmocka_unit_test(test_fuzz_ab),
        cmocka_unit_test(test_fuzz_canary),   cmocka_unit_test(test_fuzz_shadow),
        cmocka_unit_test(test_fuzz_thompson), cmocka_unit_test(test_fuzz_epsilon_greedy),
        cmocka_unit_test(test_fuzz_ucb1),     cmocka_unit_test(test_fuzz_interleave),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
