/* test_interleave.c — the interleave policy through its ops.
 *
 * Instances are built by config_parse, as the proxy builds them, and driven
 * through choose / combine / on_click / describe with seeded RNGs. The merge
 * is checked against results worked out by hand in the comments from the
 * coin sequence of the seed (asserted first, so the comment cannot drift
 * from the generator); the click tests sum the deltas the way the store
 * does and check the mapping documented in policies/interleave.c; the last
 * test runs whole impressions through a memory store. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "refusal.h"
#include "policy.h"
#include "rng.h"
#include "store.h"

/* ---- building instances ---- */

#define CFG_HEAD                                                                                   \
    "{\n"                                                                                          \
    "  \"listen\": \"127.0.0.1:8080\",\n"                                                          \
    "  \"upstreams\": {\n"                                                                         \
    "    \"champion\": {\"url\": \"http://127.0.0.1:7001\"},\n"                                    \
    "    \"challenger\": {\"url\": \"http://127.0.0.1:7002\"},\n"                                  \
    "    \"third\": {\"url\": \"http://127.0.0.1:7003\"}\n"                                        \
    "  },\n"                                                                                       \
    "  \"experiments\": [\n"
#define CFG_TAIL "\n  ]\n}\n"
#define EXP_HEAD "{\"name\": \"x\", \"match\": {\"path_prefix\": \"/\"},\n     "
#define EXP_IL(extra)                                                                              \
    EXP_HEAD "\"policy\": \"interleave\", \"arms\": [\"champion\", \"challenger\"],\n"             \
             "     \"list_pointer\": \"/items\"" extra "}"

typedef struct {
    config_t *cfg;
    const policy_ops_t *ops;
    void *p;
} inst_t;

static char *config_text(const char *experiment)
{
    size_t n = strlen(CFG_HEAD) + strlen(experiment) + strlen(CFG_TAIL) + 1;
    char *t = malloc(n);
    assert_non_null(t);
    snprintf(t, n, "%s%s%s", CFG_HEAD, experiment, CFG_TAIL);
    return t;
}

static inst_t make(const char *experiment)
{
    char err[512] = "";
    char *text = config_text(experiment);
    config_t *cfg = config_parse(text, strlen(text), "test.json", err, sizeof err);
    free(text);
    if (cfg == NULL) fail_msg("config_parse: %s", err);
    assert_int_equal(cfg->n_experiments, 1);
    assert_int_equal(cfg->experiments[0].n_arms, 2);
    inst_t in = {cfg, cfg->experiments[0].ops, cfg->experiments[0].policy};
    assert_string_equal(in.ops->name, "interleave");
    return in;
}

static void unmake(inst_t *in)
{
    config_free(in->cfg);
}

typedef struct {
    arm_stats_t stats[MM_MAX_ARMS];
    exp_control_t control;
    mm_rng_t rng;
    policy_view_t v;
} view_t;

static void view_init(view_t *w, uint64_t seed)
{
    memset(w, 0, sizeof *w);
    mm_rng_seed(&w->rng, seed);
    w->v.n_arms = 2;
    w->v.stats = w->stats;
    w->v.control = &w->control;
    w->v.rng = &w->rng;
}

/* The coins a seed gives, as combine draws them: 'A' = team A picks first. */
static void assert_coins(uint64_t seed, const char *want)
{
    mm_rng_t r;
    mm_rng_seed(&r, seed);
    for (const char *c = want; *c; c++) {
        char got = mm_rng_uniform(&r) < 0.5 ? 'A' : 'B';
        if (got != *c)
            fail_msg("seed %llu: coins differ from \"%s\"", (unsigned long long)seed, want);
    }
}

/* A ranker's answer {"model":M,"items":[{"id":..,"from":M},...],"n":N}
 * from space-separated ids. */
static char *ranked(const char *model, const char *ids)
{
    char *b = malloc(8192);
    assert_non_null(b);
    int n = snprintf(b, 8192, "{\"model\":\"%s\",\"items\":[", model);
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", ids);
    int first = 1;
    for (char *save, *t = strtok_r(tmp, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        n += snprintf(b + n, 8192 - (size_t)n, "%s{\"id\":\"%s\",\"from\":\"%s\"}",
                      first ? "" : ",", t, model);
        first = 0;
    }
    snprintf(b + n, 8192 - (size_t)n, "],\"n\":1}");
    return b;
}

static policy_resp_t ok_resp(const char *body)
{
    return (policy_resp_t){200, MM_STR("application/json"), {body, strlen(body)}, 0, MM_STR(""), 0};
}

typedef struct {
    int arm, merged;
    mm_buf_t out, aux;
} result_t;

static result_t combine2(inst_t *in, uint64_t seed, policy_resp_t a, policy_resp_t b)
{
    view_t w;
    view_init(&w, seed);
    policy_resp_t ans[2] = {a, b};
    result_t r;
    mm_buf_init(&r.out);
    mm_buf_init(&r.aux);
    r.arm = in->ops->combine(in->p, &w.v, ans, 2, &r.out, &r.aux, &r.merged);
    return r;
}

static void result_free(result_t *r)
{
    mm_buf_free(&r->out);
    mm_buf_free(&r->aux);
}

/* "id/team id/team ..." from the merged answer (ids, and the "from" of each
 * item: the original object of the team that placed it) and the aux (teams),
 * checking that both agree. */
static void merged_as_text(const result_t *r, char *out, size_t n)
{
    json_t *doc = json_loadb(r->out.p, r->out.len, 0, NULL);
    json_t *aux = json_loadb(r->aux.p, r->aux.len, 0, NULL);
    assert_non_null(doc);
    assert_non_null(aux);
    json_t *items = json_object_get(doc, "items");
    const char *teams = json_string_value(json_object_get(aux, "t"));
    const char *clicks = json_string_value(json_object_get(aux, "c"));
    json_t *ids = json_object_get(aux, "i");
    assert_int_equal(json_array_size(items), strlen(teams));
    assert_int_equal(json_array_size(ids), strlen(teams));
    assert_int_equal(strlen(clicks), strlen(teams));
    out[0] = '\0';
    size_t len = 0;
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *it = json_array_get(items, i);
        const char *id = json_string_value(json_object_get(it, "id"));
        const char *from = json_string_value(json_object_get(it, "from"));
        assert_string_equal(id, json_string_value(json_array_get(ids, i)));
        assert_int_equal(clicks[i], '0');
        /* The object comes from the team credited with it. */
        assert_int_equal(teams[i], from[0] == 'A' ? 'a' : 'b');
        len += (size_t)snprintf(out + len, n - len, "%s%s/%c", i ? " " : "", id, teams[i]);
    }
    json_decref(doc);
    json_decref(aux);
}

static void expect_merge(inst_t *in, uint64_t seed, const char *a_ids, const char *b_ids,
                         const char *want)
{
    char *a = ranked("A", a_ids), *b = ranked("B", b_ids);
    result_t r = combine2(in, seed, ok_resp(a), ok_resp(b));
    assert_int_equal(r.arm, 0);
    assert_int_equal(r.merged, 1);
    char got[2048];
    merged_as_text(&r, got, sizeof got);
    if (strcmp(got, want) != 0) fail_msg("merge: got \"%s\", want \"%s\"", got, want);
    /* The rest of the answer is the first ranker's. */
    json_t *doc = json_loadb(r.out.p, r.out.len, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(doc, "model")), "A");
    assert_int_equal(json_integer_value(json_object_get(doc, "n")), 1);
    json_decref(doc);
    result_free(&r);
    free(a);
    free(b);
}

/* ---- the merge ---- */

static void test_choose_fans_out_from_the_champion(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(""));
    view_t w;
    view_init(&w, 1);
    policy_choice_t c;
    memset(&c, 0, sizeof c);
    in.ops->choose(in.p, &w.v, NULL, &c);
    assert_int_equal(c.primary, 0);
    assert_int_equal(c.fanout, 1);
    assert_int_equal(c.n_mirrors, 0);
    /* Rewards are not for this policy: feedback is clicks. */
    assert_int_equal(in.ops->check_reward(in.p, 1.0), -1);
    unmake(&in);
}

static void test_merge_overlapping_lists(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(", \"k\": 6"));
    /* Seed 2 coins: A B A.
     *   A = a1 a2 a3 a4 a5,  B = a2 b1 a1 b2 b3.
     *   round 1, A first: A takes a1; B's best not shown is a2 -> B.
     *   round 2, B first: B's next not shown is b1; A's is a3.
     *   round 3, A first: A takes a4; B skips a1 (shown) and takes b2.
     *   k = 6 reached. a2, ranked by both, belongs to B, who placed it. */
    assert_coins(2, "ABA");
    expect_merge(&in, 2, "a1 a2 a3 a4 a5", "a2 b1 a1 b2 b3", "a1/a a2/b b1/b a3/a a4/a b2/b");
    unmake(&in);
}

static void test_merge_disjoint_lists_of_different_lengths(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL("")); /* k = 10, more than both lists hold */
    /* Seed 1 coins: B B B.
     *   A = a1 a2 a3,  B = b1 b2 b3 b4 b5.
     *   rounds 1-3, B first each time: b1 a1, b2 a2, b3 a3.
     *   A is exhausted: no more coins, B goes on alone: b4, b5.
     *   Both exhausted at 8 items (< k). */
    assert_coins(1, "BBB");
    expect_merge(&in, 1, "a1 a2 a3", "b1 b2 b3 b4 b5", "b1/b a1/a b2/b a2/a b3/b a3/a b4/b b5/b");
    unmake(&in);
}

static void test_merge_stops_at_k_mid_round(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(", \"k\": 3"));
    /* Seed 4 coins: A B.
     *   A = x y z,  B = z y x (the reverse).
     *   round 1, A first: x; B: z.
     *   round 2, B first: y (B's best not shown); k = 3 reached, A does not pick. */
    assert_coins(4, "AB");
    expect_merge(&in, 4, "x y z", "z y x", "x/a z/b y/b");
    unmake(&in);
}

static void test_merge_identical_lists(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(", \"k\": 4"));
    /* Seed 5 coins: A B.
     *   A = B = p q r s t.
     *   round 1, A first: p; B's best not shown: q.
     *   round 2, B first: r; A: s. k = 4. */
    assert_coins(5, "AB");
    expect_merge(&in, 5, "p q r s t", "p q r s t", "p/a q/b r/b s/a");
    unmake(&in);
}

static void test_merge_one_empty_list_and_integer_ids(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(""));
    /* A's list is empty: no coin is drawn, B fills alone. The answer is A's
     * text byte for byte outside the list (spacing, number spelling, escapes),
     * and B's items are B's bytes. */
    const char *a = "{ \"model\" : \"A\",\n  \"items\" : [ ],\n  \"score\": 0.1e0, \"note\": "
                    "\"\\u00e9\" }";
    const char *b = "{\"items\": [ {\"id\": 7, \"s\": 1.50}, {\"id\": 8} ], \"model\": \"B\"}";
    result_t r = combine2(&in, 3, ok_resp(a), ok_resp(b));
    assert_int_equal(r.arm, 0);
    assert_int_equal(r.merged, 1);
    const char *want = "{ \"model\" : \"A\",\n  \"items\" : [{\"id\": 7, \"s\": 1.50},{\"id\": "
                       "8}],\n  \"score\": 0.1e0, \"note\": \"\\u00e9\" }";
    assert_int_equal(r.out.len, strlen(want));
    assert_memory_equal(r.out.p, want, strlen(want));
    /* Integer ids are kept as their decimal text. */
    const char *aux = "{\"v\":1,\"t\":\"bb\",\"c\":\"00\",\"i\":[\"7\",\"8\"]}";
    assert_int_equal(r.aux.len, strlen(aux));
    assert_memory_equal(r.aux.p, aux, strlen(aux));
    result_free(&r);
    unmake(&in);
}

static void test_merge_nested_pointer_with_escapes(void **state)
{
    (void)state;
    inst_t in =
        make(EXP_HEAD "\"policy\": \"interleave\", \"arms\": [\"champion\", \"challenger\"],"
                      "\n     \"list_pointer\": \"/r~1s/0/li~0st\", \"id_field\": \"key\","
                      " \"k\": 2}");
    /* The list is at {"r/s": [{"li~st": [...]}]}; a decoy key spelled with an
     * escape comes first and a later duplicate of "r/s" wins, as in jansson. */
    const char *a = "{\"r\\/s\": 1, \"x\": [\"]\", \"}\"], \"r/s\": [{\"li~st\": "
                    "[{\"key\": \"u\"}, {\"key\": \"v\"}]}], \"tail\": true}";
    const char *b = "{\"r/s\": [{\"li~st\": [{\"key\": \"w\"}]}]}";
    /* Seed 4: A first: u; B: w. k = 2. */
    result_t r = combine2(&in, 4, ok_resp(a), ok_resp(b));
    assert_int_equal(r.merged, 1);
    const char *want = "{\"r\\/s\": 1, \"x\": [\"]\", \"}\"], \"r/s\": [{\"li~st\": "
                       "[{\"key\": \"u\"},{\"key\": \"w\"}]}], \"tail\": true}";
    assert_int_equal(r.out.len, strlen(want));
    assert_memory_equal(r.out.p, want, strlen(want));
    result_free(&r);
    unmake(&in);
}

static void test_merge_whole_document_list(void **state)
{
    (void)state;
    inst_t in =
        make(EXP_HEAD "\"policy\": \"interleave\", \"arms\": [\"champion\", \"challenger\"],"
                      " \"list_pointer\": \"\", \"k\": 3}");
    /* Seed 1: B first: 2; A: 1. Round 2, B first: 3 (k reached). */
    result_t r =
        combine2(&in, 1, ok_resp(" [{\"id\":1},{\"id\":3}]\n"), ok_resp("[{\"id\":2},{\"id\":3}]"));
    assert_int_equal(r.merged, 1);
    const char *want = " [{\"id\":2},{\"id\":1},{\"id\":3}]\n";
    assert_int_equal(r.out.len, strlen(want));
    assert_memory_equal(r.out.p, want, strlen(want));
    assert_non_null(strstr(r.aux.p, "\"t\":\"bab\""));
    result_free(&r);
    unmake(&in);
}

static void test_first_slot_is_fair_and_teams_stay_balanced(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(", \"k\": 7"));
    char *a = ranked("A", "a1 a2 a3 a4 a5 a6 a7 a8");
    char *b = ranked("B", "a2 a1 b3 a4 b5 b6 b7 b8");
    view_t w;
    view_init(&w, 2024);
    int a_first = 0;
    const int N = 10000;
    for (int i = 0; i < N; i++) {
        policy_resp_t ans[2] = {ok_resp(a), ok_resp(b)};
        mm_buf_t out, aux;
        mm_buf_init(&out);
        mm_buf_init(&aux);
        int merged;
        assert_int_equal(in.ops->combine(in.p, &w.v, ans, 2, &out, &aux, &merged), 0);
        json_t *o = json_loadb(aux.p, aux.len, 0, NULL);
        const char *t = json_string_value(json_object_get(o, "t"));
        assert_int_equal(strlen(t), 7);
        a_first += t[0] == 'a';
        /* Every round gives each team one item: with both lists long
         * enough, the team sizes differ by at most one at any prefix. */
        int da = 0;
        for (const char *c = t; *c; c++) {
            da += *c == 'a' ? 1 : -1;
            assert_true(da >= -1 && da <= 1);
        }
        json_decref(o);
        mm_buf_free(&out);
        mm_buf_free(&aux);
    }
    /* Binomial(10000, 0.5): sd 50; 4 sd either side. */
    printf("  team A first in %d of %d impressions\n", a_first, N);
    assert_true(a_first > N / 2 - 200 && a_first < N / 2 + 200);
    free(a);
    free(b);
    unmake(&in);
}

/* ---- unusable answers ---- */

static json_t *describe(inst_t *in, const arm_stats_t *stats)
{
    view_t w;
    view_init(&w, 1);
    if (stats) memcpy(w.stats, stats, 2 * sizeof(*stats));
    return in->ops->describe(in->p, &w.v);
}

static long long unusable(json_t *d, int arm, const char *reason)
{
    json_t *a = json_array_get(json_object_get(d, "arms"), (size_t)arm);
    return json_integer_value(json_object_get(json_object_get(a, "unusable"), reason));
}

static void test_unusable_answers_fall_back_with_reasons(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(""));
    char *good = ranked("G", "g1 g2");
    static const struct {
        policy_resp_t bad;
        const char *reason;
    } cases[] = {
        {{0, MM_STR(""), MM_STR(""), 0, MM_STR(""), 0}, "failed"},
        {{500, MM_STR("application/json"), MM_STR("{\"items\":[]}"), 0, MM_STR(""), 0}, "status"},
        {{200, MM_STR("application/json"), MM_STR("{\"items\":[{\"id\":\"a\"}"), 1, MM_STR(""), 0},
         "truncated"},
        {{200, MM_STR("text/plain"), MM_STR("items: a, b"), 0, MM_STR(""), 0}, "not_json"},
        {{200, MM_STR("application/json"), MM_STR("{\"list\":[{\"id\":\"a\"}]}"), 0, MM_STR(""), 0},
         "no_list"},
        {{200, MM_STR("application/json"), MM_STR("{\"items\":{\"id\":\"a\"}}"), 0, MM_STR(""), 0},
         "no_list"},
        {{200, MM_STR("application/json"), MM_STR("{\"items\":[{\"id\":\"a\"},{\"name\":\"b\"}]}"),
          0, MM_STR(""), 0},
         "no_id"},
        {{200, MM_STR("application/json"), MM_STR("{\"items\":[{\"id\":1.5}]}"), 0, MM_STR(""), 0},
         "no_id"},
        {{200, MM_STR("application/json"), MM_STR("{\"items\":[\"a\"]}"), 0, MM_STR(""), 0},
         "no_id"},
        {{200, MM_STR("application/json"), MM_STR("{\"items\":[{\"id\":\"\"}]}"), 0, MM_STR(""), 0},
         "no_id"},
    };
    for (size_t i = 0; i < MM_ARRAY_LEN(cases); i++) {
        for (int bad_arm = 0; bad_arm < 2; bad_arm++) {
            json_t *before = describe(&in, NULL);
            long long n0 = unusable(before, bad_arm, cases[i].reason);
            json_decref(before);
            result_t r = bad_arm == 0 ? combine2(&in, 1, cases[i].bad, ok_resp(good))
                                      : combine2(&in, 1, ok_resp(good), cases[i].bad);
            /* The good answer goes out unchanged: the core passes its body. */
            assert_int_equal(r.arm, 1 - bad_arm);
            assert_int_equal(r.merged, 0);
            assert_int_equal(r.aux.len, 0);
            json_t *d = describe(&in, NULL);
            if (unusable(d, bad_arm, cases[i].reason) != n0 + 1)
                fail_msg("case %zu (%s) on arm %d not counted", i, cases[i].reason, bad_arm);
            json_decref(d);
            result_free(&r);
        }
    }
    /* Both unusable: no answer (the core answers 502/504). */
    result_t r = combine2(&in, 1, cases[0].bad, cases[3].bad);
    assert_int_equal(r.arm, -1);
    json_t *d = describe(&in, NULL);
    json_t *inst = json_object_get(d, "this_instance");
    assert_int_equal(json_integer_value(json_object_get(inst, "no_usable_answer")), 1);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(inst, "fallbacks_to"), "champion")),
        MM_ARRAY_LEN(cases));
    json_decref(d);
    result_free(&r);
    /* reset forgets this instance's counters */
    in.ops->reset(in.p);
    d = describe(&in, NULL);
    assert_int_equal(unusable(d, 0, "failed"), 0);
    json_decref(d);
    free(good);
    unmake(&in);
}

/* ---- clicks ---- */

/* The seed-2 impression of test_merge_overlapping_lists:
 * a1/a a2/b b1/b a3/a a4/a b2/b. */
static void impression(inst_t *in, mm_buf_t *aux)
{
    char *a = ranked("A", "a1 a2 a3 a4 a5"), *b = ranked("B", "a2 b1 a1 b2 b3");
    result_t r = combine2(in, 2, ok_resp(a), ok_resp(b));
    assert_int_equal(r.merged, 1);
    mm_buf_init(aux);
    mm_buf_append(aux, r.aux.p, r.aux.len);
    result_free(&r);
    free(a);
    free(b);
}

static void add_stats(arm_stats_t *sum, const arm_stats_t *d)
{
    for (int i = 0; i < 2; i++) {
        sum[i].pulls += d[i].pulls;
        sum[i].feedback += d[i].feedback;
        sum[i].errors += d[i].errors;
        sum[i].reward_sum += d[i].reward_sum;
        sum[i].reward_sq_sum += d[i].reward_sq_sum;
        sum[i].successes += d[i].successes;
        sum[i].failures += d[i].failures;
    }
}

/* Click the items in order on a fresh impression; sum the deltas. */
static void clicks(inst_t *in, const char *items, arm_stats_t *sum)
{
    mm_buf_t aux;
    impression(in, &aux);
    memset(sum, 0, 2 * sizeof(*sum));
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s", items);
    for (char *save, *t = strtok_r(tmp, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        arm_stats_t d[MM_MAX_ARMS];
        memset(d, 0xff, sizeof d); /* on_click must clear what it does not set */
        assert_int_equal(in->ops->on_click(in->p, &aux, t, d), 0);
        add_stats(sum, d);
    }
    mm_buf_free(&aux);
}

static void test_click_credits_the_team_that_placed_the_item(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(", \"k\": 6"));
    mm_buf_t aux;
    impression(&in, &aux);
    arm_stats_t d[MM_MAX_ARMS];

    /* a2 is ranked by both (A: 2nd, B: 1st); B placed it: B's click, and
     * the impression goes from no click to won by B. */
    assert_int_equal(in.ops->on_click(in.p, &aux, "a2", d), 0);
    assert_true(d[1].reward_sum == 1 && d[0].reward_sum == 0);
    assert_true(d[1].successes == 1 && d[0].successes == 0 && d[0].failures == 0);
    assert_int_equal(d[0].feedback, 1); /* first click of the impression */
    assert_int_equal(d[1].feedback, 1);
    assert_non_null(strstr(aux.p, "\"c\":\"010000\""));

    /* The same item again: counted once, nothing changes. */
    assert_int_equal(in.ops->on_click(in.p, &aux, "a2", d), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(d[i].feedback, 0);
        assert_true(d[i].reward_sum == 0 && d[i].successes == 0 && d[i].failures == 0);
    }

    /* Items not shown (a5 was ranked by A but cut at k) are invalid. */
    assert_int_equal(in.ops->on_click(in.p, &aux, "a5", d), -1);
    assert_int_equal(in.ops->on_click(in.p, &aux, "nope", d), -1);

    /* Broken attribution is invalid, not a crash. */
    mm_buf_t bad;
    mm_buf_init(&bad);
    mm_buf_lit(&bad, "{\"v\":1,\"t\":\"ab\",\"c\":\"0\",\"i\":[\"x\",\"y\"]}");
    assert_int_equal(in.ops->on_click(in.p, &bad, "x", d), -1);
    mm_buf_reset(&bad);
    mm_buf_lit(&bad, "not json");
    assert_int_equal(in.ops->on_click(in.p, &bad, "x", d), -1);
    mm_buf_free(&bad);
    mm_buf_free(&aux);
    unmake(&in);
}

static void test_outcome_deltas_over_click_sequences(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(", \"k\": 6"));
    arm_stats_t s[2];
    /* Impression: a1/a a2/b b1/b a3/a a4/a b2/b. */

    /* A then B: a tie. One clicked impression for both arms. */
    clicks(&in, "a1 b1", s);
    assert_true(s[0].successes == 0 && s[1].successes == 0);
    assert_true(s[0].failures == 1 && s[1].failures == 0);
    assert_int_equal(s[0].feedback, 1);
    assert_int_equal(s[1].feedback, 1);
    assert_true(s[0].reward_sum == 1 && s[1].reward_sum == 1);

    /* A, A, B: A wins 2-1. reward_sq_sum holds clicks^2 per team. */
    clicks(&in, "a1 a3 b1", s);
    assert_true(s[0].successes == 1 && s[1].successes == 0 && s[0].failures == 0);
    assert_true(s[0].reward_sum == 2 && s[1].reward_sum == 1);
    assert_true(s[0].reward_sq_sum == 4 && s[1].reward_sq_sum == 1);
    assert_int_equal(s[0].feedback, 1);

    /* B, A, A: won by B, then a tie, then won by A. */
    clicks(&in, "b1 a1 a3", s);
    assert_true(s[0].successes == 1 && s[1].successes == 0 && s[0].failures == 0);

    /* B, B (a2 is B's), A: B wins. */
    clicks(&in, "a2 b2 a4", s);
    assert_true(s[0].successes == 0 && s[1].successes == 1 && s[0].failures == 0);
    assert_true(s[1].reward_sum == 2 && s[1].reward_sq_sum == 4);

    /* A, B, A, B: a tie again. */
    clicks(&in, "a1 b1 a3 b2", s);
    assert_true(s[0].successes == 0 && s[1].successes == 0 && s[0].failures == 1);
    unmake(&in);
}

/* ---- describe ---- */

static void test_describe_statistics(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(""));
    arm_stats_t st[2];
    memset(st, 0, sizeof st);
    /* 100 clicked impressions: A won 60, B 40, no tie.
     *   preference (60 - 40) / 100 = 0.2; the score's mean of squares is 1,
     *   sample variance (1 - 0.04) * 100/99 = 0.969697, se = 0.098473,
     *   CI 0.2 -/+ 1.959964 * 0.098473 = [0.00700, 0.39300].
     *   sign test: 2 * P(Bin(100, 1/2) <= 40) = 0.056887. */
    st[0].feedback = st[1].feedback = 100;
    st[0].successes = 60;
    st[1].successes = 40;
    st[0].pulls = st[1].pulls = 1000;
    json_t *d = describe(&in, st);
    assert_int_equal(json_integer_value(json_object_get(d, "wins_a")), 60);
    assert_int_equal(json_integer_value(json_object_get(d, "wins_b")), 40);
    assert_int_equal(json_integer_value(json_object_get(d, "clicked_impressions")), 100);
    assert_true(fabs(json_real_value(json_object_get(d, "preference")) - 0.2) < 1e-12);
    json_t *ci = json_object_get(d, "preference_ci95");
    assert_true(fabs(json_real_value(json_array_get(ci, 0)) - 0.00700) < 1e-5);
    assert_true(fabs(json_real_value(json_array_get(ci, 1)) - 0.39300) < 1e-5);
    json_t *sg = json_object_get(d, "sign_test");
    assert_true(fabs(json_real_value(json_object_get(sg, "p_value")) - 0.056887) < 1e-6);
    assert_string_equal(json_string_value(json_object_get(sg, "method")), "exact binomial");
    assert_string_equal(json_string_value(json_object_get(d, "leader")), "champion");
    assert_false(json_is_true(json_object_get(d, "significant")));
    json_t *a0 = json_array_get(json_object_get(d, "arms"), 0);
    assert_int_equal(json_integer_value(json_object_get(a0, "served")), 1000);
    json_decref(d);

    /* Small exact cases: 5-0 gives 2/32 = 0.0625, 6-0 gives 2/64. */
    memset(st, 0, sizeof st);
    st[0].feedback = 5;
    st[1].successes = 5;
    d = describe(&in, st);
    sg = json_object_get(d, "sign_test");
    assert_true(fabs(json_real_value(json_object_get(sg, "p_value")) - 0.0625) < 1e-12);
    assert_string_equal(json_string_value(json_object_get(d, "leader")), "challenger");
    json_decref(d);
    st[0].feedback = 6;
    st[1].successes = 6;
    d = describe(&in, st);
    sg = json_object_get(d, "sign_test");
    assert_true(fabs(json_real_value(json_object_get(sg, "p_value")) - 0.03125) < 1e-12);
    assert_true(json_is_true(json_object_get(d, "significant")));
    json_decref(d);

    /* Large: 10100 vs 9900 plus 5000 ties, normal approximation with
     * continuity correction: z = 199 / sqrt(20000) = 1.407142,
     * p = erfc(z / sqrt 2) = 0.159391. */
    memset(st, 0, sizeof st);
    st[0].feedback = 25000;
    st[0].successes = 10100;
    st[1].successes = 9900;
    st[0].failures = 5000;
    d = describe(&in, st);
    sg = json_object_get(d, "sign_test");
    assert_true(fabs(json_real_value(json_object_get(sg, "p_value")) - 0.159391) < 1e-5);
    assert_string_equal(json_string_value(json_object_get(sg, "method")), "normal approximation");
    assert_int_equal(json_integer_value(json_object_get(d, "ties")), 5000);
    json_decref(d);

    /* Nothing yet: no preference, no interval, p = 1. */
    d = describe(&in, NULL);
    assert_true(json_is_null(json_object_get(d, "preference")));
    assert_true(json_is_null(json_object_get(d, "preference_ci95")));
    assert_true(json_is_null(json_object_get(d, "leader")));
    json_decref(d);
    unmake(&in);
}

/* Whole impressions through a memory store, the way feedback.c drives it: a
 * user who clicks only items ranker B puts in its own top 3 makes B win, and
 * the store's sums obey wins_a + wins_b + ties = clicked impressions. */
typedef struct {
    inst_t *in;
    store_t *s;
    exp_state_t *e;
    const char *item;
    mm_str_t id;
    int rc, calls;
} click_ctx_t;

static void on_aux(void *arg, int found, const char *data, size_t n)
{
    click_ctx_t *c = arg;
    c->calls++;
    c->rc = -2;
    if (!found) return;
    mm_buf_t aux;
    mm_buf_init(&aux);
    mm_buf_append(&aux, data, n);
    arm_stats_t d[MM_MAX_ARMS];
    c->rc = c->in->ops->on_click(c->in->p, &aux, c->item, d);
    if (c->rc == 0) {
        for (int a = 0; a < 2; a++) store_add(c->s, c->e, a, &d[a]);
        store_put_aux(c->s, c->id, aux.p, aux.len, 60);
    }
    mm_buf_free(&aux);
}

static void test_store_sums_make_b_win(void **state)
{
    (void)state;
    inst_t in = make(EXP_IL(", \"k\": 6"));
    uv_loop_t loop;
    uv_loop_init(&loop);
    cfg_store_t sc = {.type = STORE_MEMORY};
    char err[128];
    store_t *s = store_create(&loop, &sc, err, sizeof err);
    assert_non_null(s);
    const char *const arms[] = {"champion", "challenger"};
    exp_control_t ctl;
    memset(&ctl, 0, sizeof ctl);
    exp_state_t *e = store_experiment(s, "x", arms, 2, &ctl, 0);
    assert_non_null(e);
    char *a = ranked("A", "i1 i2 i3 i4 i5 i6");
    char *b = ranked("B", "i4 i7 i1 i8 i2 i9");
    const char *b_top[] = {"i4", "i7", "i1"};
    view_t w;
    view_init(&w, 99);
    mm_rng_t user;
    mm_rng_seed(&user, 7);
    int total_clicks = 0;
    const int N = 200;
    for (int n = 0; n < N; n++) {
        char id[32];
        snprintf(id, sizeof id, "req-%d", n);
        policy_resp_t ans[2] = {ok_resp(a), ok_resp(b)};
        result_t r;
        mm_buf_init(&r.out);
        mm_buf_init(&r.aux);
        assert_int_equal(in.ops->combine(in.p, &w.v, ans, 2, &r.out, &r.aux, &r.merged), 0);
        store_pull(s, e, 0);
        store_pull(s, e, 1);
        store_put_aux(s, (mm_str_t){id, strlen(id)}, r.aux.p, r.aux.len, 60);
        result_free(&r);
        /* Impressions 0, 3, 6, ... get no click; the others one or two
         * clicks on B's top 3 (a repeat click counts once). */
        if (n % 3 == 0) continue;
        int nclicks = 1 + (int)mm_rng_below(&user, 2);
        for (int k = 0; k < nclicks; k++) {
            click_ctx_t c = {&in, s, e, b_top[mm_rng_below(&user, 3)], {id, strlen(id)}, 0, 0};
            store_get_aux(s, c.id, on_aux, &c);
            assert_int_equal(c.calls, 1); /* the memory store answers at once */
            assert_int_equal(c.rc, 0);
            total_clicks++;
        }
    }
    const arm_stats_t *m = e->merged;
    double wa = m[0].successes, wb = m[1].successes, ties = m[0].failures;
    printf("  wins A %.0f, wins B %.0f, ties %.0f, clicked impressions %llu\n", wa, wb, ties,
           (unsigned long long)m[0].feedback);
    assert_int_equal(m[0].feedback, N - (N + 2) / 3);
    assert_int_equal(m[1].feedback, m[0].feedback);
    assert_true(wa + wb + ties == (double)m[0].feedback);
    assert_true(m[1].failures == 0);
    assert_true(m[0].reward_sum + m[1].reward_sum <= total_clicks);
    assert_true(wb > wa);
    assert_int_equal(m[0].pulls, N);

    /* describe over the store's sums: B leads, significantly. */
    view_t dv;
    view_init(&dv, 1);
    memcpy(dv.stats, m, 2 * sizeof(*m));
    json_t *d = in.ops->describe(in.p, &dv.v);
    assert_string_equal(json_string_value(json_object_get(d, "leader")), "challenger");
    assert_true(json_is_true(json_object_get(d, "significant")));
    assert_true(json_real_value(json_object_get(d, "preference")) < 0);
    json_decref(d);

    /* A click for a request with no attribution finds nothing. */
    click_ctx_t c = {&in, s, e, "i4", MM_STR("never-served"), 0, 0};
    store_get_aux(s, c.id, on_aux, &c);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.rc, -2);

    free(a);
    free(b);
    store_destroy(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    unmake(&in);
}

/* ---- configuration ---- */

static void expect_error(const char *experiment, const char *needle, const char *words)
{
    char *text = config_text(experiment);
    expect_refused_at(text, strstr(text, "\"experiments\""), needle, words);
    free(text);
}

static void test_config_errors(void **state)
{
    (void)state;
    expect_error(EXP_HEAD "\"policy\": \"interleave\",\n     \"arms\": [\"champion\", "
                          "\"challenger\", \"third\"], \"list_pointer\": \"/items\"}",
                 "[\"champion\"", "exactly 2 arms");
    expect_error(EXP_HEAD "\"policy\": \"interleave\", \"arms\": [\"champion\"], "
                          "\"list_pointer\": \"/items\"}",
                 "[\"champion\"", "exactly 2 arms");
    expect_error(EXP_HEAD "\"policy\": \"interleave\", \"arms\": [\"champion\", \"champion\"], "
                          "\"list_pointer\": \"/items\"}",
                 "\"champion\"]", "champion");
    expect_error(EXP_HEAD "\"policy\": \"interleave\", \"arms\": [\"champion\", \"challenger\"]}",
                 "{\"name\"", "list_pointer");
    expect_error(EXP_IL(", \"k\": 0"), "0}", "k");
    expect_error(EXP_IL(",\n     \"k\": 1001"), "1001", "k");
    expect_error(EXP_IL(", \"k\": \"ten\""), "\"ten\"", "k");
    expect_error(EXP_HEAD "\"policy\": \"interleave\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"list_pointer\": \"items\"}",
                 "\"items\"", "JSON pointer");
    expect_error(EXP_HEAD "\"policy\": \"interleave\", \"arms\": [\"champion\", \"challenger\"], "
                          "\"list_pointer\": \"/a~2b\"}",
                 "\"/a~2b\"", "JSON pointer");
    expect_error(EXP_IL(", \"id_field\": \"\""), "\"\"}", "id_field");
    expect_error(EXP_IL(", \"timeout_ms\": 100"), "\"timeout_ms\"", "timeout_ms");
}

static void test_example_config_parses(void **state)
{
    (void)state;
    const char *dir = getenv("MM_SOURCE_DIR");
    if (dir == NULL) skip();
    char path[1024], err[512] = "";
    snprintf(path, sizeof path, "%s/config/interleave.json", dir);
    config_t *c = config_load(path, err, sizeof err);
    if (c == NULL) fail_msg("%s", err);
    assert_int_equal(c->n_experiments, 1);
    assert_string_equal(c->experiments[0].ops->name, "interleave");
    assert_int_equal(c->experiments[0].n_arms, 2);
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_choose_fans_out_from_the_champion),
        cmocka_unit_test(test_merge_overlapping_lists),
        cmocka_unit_test(test_merge_disjoint_lists_of_different_lengths),
        cmocka_unit_test(test_merge_stops_at_k_mid_round),
        cmocka_unit_test(test_merge_identical_lists),
        cmocka_unit_test(test_merge_one_empty_list_and_integer_ids),
        cmocka_unit_test(test_merge_nested_pointer_with_escapes),
        cmocka_unit_test(test_merge_whole_document_list),
        cmocka_unit_test(test_first_slot_is_fair_and_teams_stay_balanced),
        cmocka_unit_test(test_unusable_answers_fall_back_with_reasons),
        cmocka_unit_test(test_click_credits_the_team_that_placed_the_item),
        cmocka_unit_test(test_outcome_deltas_over_click_sequences),
        cmocka_unit_test(test_describe_statistics),
        cmocka_unit_test(test_store_sums_make_b_win),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_example_config_parses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
