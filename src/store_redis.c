/* store_redis.c — the Redis replicator behind the Redis store.
 *
 * store.c keeps all state locally, exactly as the memory store does; this
 * file ships it to Redis and folds the global view back in. One hiredis async
 * connection on the libuv loop; nothing on the hot path touches it. A timer
 * runs a *sync round* every sync_ms, one round at a time:
 *   - per experiment one EVAL of SYNC_SCRIPT (below): apply this instance's
 *     deltas as HINCRBY/HINCRBYFLOAT, write the control hash if it changed
 *     here, DEL the arm hashes after a local reset, then return the control
 *     hash and every arm hash. Atomic, so the snapshot read back contains
 *     exactly our write; `merged` becomes snapshot + what accumulated since.
 *     The answer hashes PREFIX:{EXP}:lat:ARM ride along (sparse HINCRBY of
 *     a copy of answers_local, HGETALL back); the copy is subtracted from
 *     answers_local once confirmed, so the write in flight stays visible.
 *     So does the policy's tally, PREFIX:{EXP}:tally (tally.h), the same
 *     way: its local counts' copy, then the hash back (the fields of this
 *     instance's definition: each name is prefixed with the definition's
 *     fingerprint, "FP|NAME").
 *   - SET PREFIX:req:ID "EXP ARM" PX ttl for remembered request ids (queued,
 *     bounded, at most REQ_PER_ROUND per round);
 *   - SET PREFIX:il:ID DATA PX ttl for per-request data (store_put_aux), in
 *     the order it was put; a version superseded locally before it was sent
 *     is skipped, and a round where any of these failed sends them all again
 *     (SET is idempotent, and the order is kept);
 *   - XACK of stream entries the receiver applied, XREADGROUP of new ones,
 *     and now and then XPENDING + XCLAIM of entries left by dead consumers
 *     and TRIM_SCRIPT, which deletes the entries every group is done with.
 *
 * Exactly once. A write whose reply is lost (connection dropped, Redis
 * killed) may or may not have been applied. Resending it could count twice,
 * dropping it could lose it; so every write carries a sequence number, and
 * the script applies it only if it is above the last one recorded for this
 * instance in PREFIX:{EXP}:seq:INSTANCE (a per-process id with a random part;
 * the key expires a day after the last write). A failed write is kept as is
 * (same seq, same deltas) and resent until a reply confirms it; new deltas
 * wait in `pending` for the next write. The price is one Lua script instead
 * of bare pipelined HINCRBYs, and one small key per instance and experiment.
 *
 * The script is sent whole with EVAL (some 1.6 KB per experiment per round)
 * rather than EVALSHA: no NOSCRIPT recovery path, and Redis caches the
 * compiled script by its hash anyway.
 *
 * Connection: reconnect with backoff (100 ms doubling to 5 s), connect and
 * PING within 2 s, and a round without a reply for 5 s drops the connection
 * (a hung or stopped Redis). store_up() is 1 from the first PONG to the next
 * failure. While down, deltas keep accumulating in `pending` (counters do not
 * need a bound), control changes and resets stay marked, request ids queue up
 * to STORE_REQ_QUEUE_DEFAULT (then are dropped and counted), and all of it is
 * written on reconnect. A host name is resolved in libuv's thread pool at
 * each connect (redis_connect), never on the loop.
 *
 * Event-loop glue: our own (redis_glue.h), not hiredis/adapters/libuv.h.
 *
 * Handles: three timers owned here, the connection's poll handle owned by
 * the glue, and with store.sentinel the Sentinel client's (sentinel.h);
 * each freed in its close callback. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netdb.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <jansson.h>

#include "addr.h"
#include "log.h"
#include "redis_glue.h"
#include "sentinel.h"
#include "store_internal.h"
#include "tally.h"

#define BACKOFF_MIN_MS     100u
#define BACKOFF_MAX_MS     5000u
#define CONNECT_TIMEOUT_MS 2000u
#define ROUND_TIMEOUT_MS   5000u
#define REQ_PER_ROUND      10000u
#define SEQ_TTL_S          "86400"
#define GROUP              "modelmux"
#define PRUNE_PER_ROUND    1000u
#define N_FIELDS           7
#define AUX_PER_ROUND      10000u
#define GET_TIMEOUT_MS     1000u /* a GET for feedback answered "not found" after this */
#define FLUSH_TIMEOUT_MS   1000u /* a store_flush waiter called anyway after this */

/* KEYS[1] control hash, KEYS[2] seq key, KEYS[3..2+N] the N arm hashes,
 * KEYS[3+N..2+2N] their answer hashes PREFIX:{EXP}:lat:ARM, KEYS[3+2N] the
 * tally hash PREFIX:{EXP}:tally.
 * ARGV[1] seq (0: read only), ARGV[2] seq key TTL, ARGV[3] control write mode
 * (0 none, 1 only if Redis has no control yet, "2:N" always, "3:N:V" only if
 * the version is still V — a policy's change, see store_propose_control; N is
 * the number of local changes the write carries, and the version goes up by
 * N, once per change as DESIGN.md §6 says; mode 1 makes it 1), and after a
 * ':' the version the instance knew from Redis, F: a control written
 * anew (mode 1, a restore) goes on from max(Redis's, F), never back to 1,
 * and for mode 2 after a last ':' the fields the operator's changes changed
 * (CTL_F_*: 1 weights, 2 state, 4 canary_step; all when Redis has none):
 * only those are written, so a change another instance made to the others
 * meanwhile is kept — a pause on B right after a PUT of weights on A wrote
 * B's whole stale control and undid the weights A had acknowledged,
 * ARGV[4] '1': reset (DEL the arm and answer hashes, and a new
 * reset_epoch: Redis's clock in microseconds, above the one before, so
 * that an epoch never comes back, not even after Redis lost its data and
 * the count would start again; an instance that knew the old one would
 * take a reset for none, and let increments counted before it through);
 * '0:E': the deltas were counted while reset_epoch was E, and are not
 * applied if it is another now (an instance's reset came in between: they
 * were learned before it; 0, Redis lost its data, is not a reset); '0':
 * applied in any case (no epoch read yet), ARGV[5..7]
 * weights, state, canary_step, ARGV[8] restore ('1': 7 more values per arm
 * follow the deltas), then 7 deltas per arm in FIELD order ('0': skip).
 * After those: the answer deltas, per arm a count C then C pairs (field,
 * increment), fields "n" (answers), "e" (errors) and a bucket's decimal
 * index, only the non-zero ones; with restore, the answer snapshot the same
 * way after them. Last the tally: the field prefix of the write's definition
 * ("FP|"), '1' to delete that definition's fields first (a reload changed
 * the experiment to it: its counts start over, unless the hash's field
 * "@def" already names it, that is another instance's reload arrived at it
 * first and the instances arriving after it add to its counts; the delete
 * sets "@def") or '0', the deltas as a count C then C pairs (name, increment), and with
 * restore its snapshot the same way. The tally comes back as the fields of
 * that definition only, without the prefix.
 *
 * Exactly once, whatever Redis refuses. Redis does not undo a script's
 * writes when a command in it fails, so a script that stopped halfway and
 * was sent again would count its first half twice. So the script only reads
 * until its first write, which records the sequence number: a condition that
 * refuses writes (OOM, a read-only replica, a failed save) refuses that one,
 * the script stops with nothing written, and the write is sent again later.
 * Every write after it goes through redis.pcall: a command Redis refuses (a
 * field another tool overwrote with text, an ACL that forbids HINCRBYFLOAT)
 * is skipped, the others are applied, and the script completes; its last
 * reply element names the first refused command and Redis's answer ('' when
 * none), and the instance logs it. What refused commands carried is lost,
 * as the field it was for already is; nothing is ever counted twice. (An
 * up-front check of every field instead, to hold the whole write until the
 * field is repaired, cost a third more Redis time per round, and would hold
 * back the experiment's control changes too.)
 *
 * Restore: Redis restarted empty (or was flushed) loses every statistic the
 * fleet learned, while each instance still holds the last snapshot it read.
 * The first script that finds neither the control hash nor any arm, answer,
 * restored or tally hash writes that snapshot back and re-seeds the control
 * in the same atomic step, records it in the restored hash (KEYS[#KEYS-1],
 * field KEY NUL FIELD), and opens a 60 s window under a new incarnation.
 * Whoever writes first, then: within the window, a snapshot read under an
 * earlier incarnation that is better than the one recorded (a later reset
 * epoch, or more events in the same one: the counts only grow between
 * resets) adds its difference to it and becomes the one recorded, so the
 * state ends as the best snapshot plus what was counted since, and nothing
 * counts twice (the same snapshot again is not better). Its control
 * replaces the seeded one only while the version is still the one the
 * restore left (restore_version). ARGV after the tally snapshot, with
 * restore: the snapshot's incarnation ('' none: a memory store's, never
 * added), its reset epoch and its event count (restore_rank). See
 * docs/store.md, "Redis restarted empty". */
static const char SYNC_SCRIPT[] =
    "local f = {'pulls', 'feedback', 'errors', 'reward_sum', 'reward_sq_sum',\n"
    "           'successes', 'failures'}\n"
    "local n = (#KEYS - 4) / 2\n"
    "local R = KEYS[#KEYS - 1]\n"
    "local failed = ''\n"
    "local tp\n"
    "local function w(...)\n"
    "  local r = redis.pcall(...)\n"
    "  if type(r) == 'table' and r.err and failed == '' then\n"
    "    local cmd, key, field = ...\n"
    "    failed = cmd .. ' ' .. key .. (field and ' ' .. field or '') .. ': ' .. r.err\n"
    "  end\n"
    "end\n"
    "local function add(key, b)\n"
    "  for j = 1, 7 do\n"
    "    local v = ARGV[b + j - 1]\n"
    "    if v ~= '0' then\n"
    "      w(j <= 3 and 'HINCRBY' or 'HINCRBYFLOAT', key, f[j], v)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local function addlat(key, p)\n"
    "  local c = tonumber(ARGV[p])\n"
    "  for j = 1, c do w('HINCRBY', key, ARGV[p + 2 * j - 1], ARGV[p + 2 * j]) end\n"
    "  return p + 1 + 2 * c\n"
    "end\n"
    "local function addtally(p)\n"
    "  local c = tonumber(ARGV[p])\n"
    "  for j = 1, c do\n"
    "    w('HINCRBY', KEYS[#KEYS], tp .. ARGV[p + 2 * j - 1], ARGV[p + 2 * j])\n"
    "  end\n"
    "end\n"
    "local lat = 9 + 7 * n * (ARGV[8] == '1' and 2 or 1)\n"
    "local tpos = lat\n"
    "for i = 1, n * (ARGV[8] == '1' and 2 or 1) do\n"
    "  tpos = tpos + 1 + 2 * tonumber(ARGV[tpos])\n"
    "end\n"
    "tp = ARGV[tpos]\n"
    "local tdeltas = tpos + 2\n"
    "local trestore = tdeltas + 1 + 2 * tonumber(ARGV[tdeltas])\n"
    "local sinc, sepoch, sevents = '', 0, 0\n"
    "if ARGV[8] == '1' then\n"
    "  local i = trestore + 1 + 2 * tonumber(ARGV[trestore])\n"
    "  sinc, sepoch, sevents = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])\n"
    "end\n"
    "local seq = tonumber(ARGV[1])\n"
    "local apply = seq > 0 and seq > (tonumber(redis.call('GET', KEYS[2]) or '0') or 0)\n"
    "local reset, known = string.match(ARGV[4], '^(%d):?(%d*)$')\n"
    "local stale = false\n"
    "if reset == '0' and known ~= '' then\n"
    "  local cur = tonumber(redis.call('HGET', KEYS[1], 'reset_epoch') or '0') or 0\n"
    "  stale = cur ~= 0 and cur ~= tonumber(known)\n"
    "end\n"
    "local had_ctl = redis.call('HEXISTS', KEYS[1], 'version') == 1\n"
    "local empty = not had_ctl\n"
    "if empty then\n"
    "  for i = 3, #KEYS do\n"
    "    if redis.call('EXISTS', KEYS[i]) == 1 then empty = false end\n"
    "  end\n"
    "end\n"
    "local restore = ARGV[8] == '1' and empty\n"
    "local kind, bump, cbase, floor, fields =\n"
    "  string.match(ARGV[3], '^(%d):?(%d*):?(%d*):?(%d*):?(%d*)$')\n"
    "floor = tonumber(floor) or 0\n"
    "local function above(n)\n"
    "  local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0\n"
    "  if floor > cur then cur = floor end\n"
    "  w('HSET', KEYS[1], 'version', string.format('%.0f', cur + n))\n"
    "end\n"
    "local tm = redis.call('TIME')\n"
    "local now_ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "local better = false\n"
    "local inc = redis.call('HGET', KEYS[1], 'incarnation')\n"
    "if ARGV[8] == '1' and had_ctl and sinc ~= '' then\n"
    "  local m = redis.call('HMGET', KEYS[1], 'restore_until', 'restore_epoch', 'restore_events')\n"
    "  if inc and inc ~= sinc and (tonumber(m[1] or '') or 0) >= now_ms then\n"
    "    local ep, ev = tonumber(m[2] or '') or 0, tonumber(m[3] or '') or -1\n"
    "    better = sepoch > ep or (sepoch == ep and sevents > ev)\n"
    "  end\n"
    "end\n"
    "local base = {}\n"
    "if better then\n"
    "  local all = redis.call('HGETALL', R)\n"
    "  for i = 1, #all, 2 do base[all[i]] = all[i + 1] end\n"
    "end\n"
    "if apply then\n"
    "  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])\n"
    "elseif seq > 0 then\n"
    "  redis.call('EXPIRE', KEYS[2], ARGV[2])\n"
    "end\n"
    "local covered = {}\n"
    "local function rebase(key, field, v, float)\n"
    "  local bk = key .. '\\0' .. field\n"
    "  local d = (tonumber(v) or 0) - (tonumber(base[bk] or '0') or 0)\n"
    "  base[bk] = nil\n"
    "  if d ~= 0 then\n"
    "    if float then w('HINCRBYFLOAT', key, field, string.format('%.17g', d))\n"
    "    else w('HINCRBY', key, field, string.format('%.0f', d)) end\n"
    "  end\n"
    "  if tonumber(v) == 0 then w('HDEL', R, bk) else w('HSET', R, bk, v) end\n"
    "end\n"
    "if restore or better then\n"
    "  local v = redis.call('HMGET', KEYS[1], 'version', 'restore_version')\n"
    "  if restore or (v[2] and v[1] == v[2]) then\n"
    "    w('HSET', KEYS[1], 'weights', ARGV[5], 'state', ARGV[6], 'canary_step', ARGV[7])\n"
    "    above(1)\n"
    "    w('HSET', KEYS[1], 'restore_version', redis.call('HGET', KEYS[1], 'version'))\n"
    "  end\n"
    "  for i = 3, 2 + n do\n"
    "    covered[KEYS[i]] = ''\n"
    "    for j = 1, 7 do rebase(KEYS[i], f[j], ARGV[9 + (n + i - 3) * 7 + j - 1], j > 3) end\n"
    "  end\n"
    "  local p = lat\n"
    "  for i = 1, n do p = p + 1 + 2 * tonumber(ARGV[p]) end\n"
    "  for i = 1, n do\n"
    "    local key, c = KEYS[2 + n + i], tonumber(ARGV[p])\n"
    "    covered[key] = ''\n"
    "    for j = 1, c do rebase(key, ARGV[p + 2 * j - 1], ARGV[p + 2 * j], false) end\n"
    "    p = p + 1 + 2 * c\n"
    "  end\n"
    "  local c = tonumber(ARGV[trestore])\n"
    "  if c > 0 then covered[KEYS[#KEYS]] = tp end\n"
    "  for j = 1, c do\n"
    "    rebase(KEYS[#KEYS], tp .. ARGV[trestore + 2 * j - 1], ARGV[trestore + 2 * j], false)\n"
    "  end\n"
    "  for bk, v in pairs(base) do\n"
    "    local at = string.find(bk, '\\0', 1, true)\n"
    "    local key, field = string.sub(bk, 1, at - 1), string.sub(bk, at + 1)\n"
    "    local pre = covered[key]\n"
    "    if pre and string.sub(field, 1, #pre) == pre then rebase(key, field, '0', false) end\n"
    "  end\n"
    "  w('HSET', KEYS[1], 'restore_epoch', string.format('%.0f', sepoch),\n"
    "    'restore_events', string.format('%.0f', sevents))\n"
    "end\n"
    "if apply then\n"
    "  if reset == '1' then\n"
    "    for i = 3, #KEYS do w('DEL', KEYS[i]) end\n"
    "    w('HDEL', KEYS[1], 'restore_until')\n"
    "    local t = redis.call('TIME')\n"
    "    local e = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "    local was = tonumber(redis.call('HGET', KEYS[1], 'reset_epoch') or '0') or 0\n"
    "    if e <= was then e = was + 1 end\n"
    "    w('HSET', KEYS[1], 'reset_epoch', string.format('%.0f', e))\n"
    "  end\n"
    "  local write = kind == '2'\n"
    "  if kind == '1' then\n"
    "    write = redis.call('HEXISTS', KEYS[1], 'version') == 0\n"
    "  elseif kind == '3' then\n"
    "    local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')\n"
    "    write = v == tonumber(cbase)\n"
    "  end\n"
    "  if write then\n"
    "    local m = tonumber(fields) or 7\n"
    "    if redis.call('HEXISTS', KEYS[1], 'state') == 0 then m = 7 end\n"
    "    if m % 2 == 1 then w('HSET', KEYS[1], 'weights', ARGV[5]) end\n"
    "    if math.floor(m / 2) % 2 == 1 then w('HSET', KEYS[1], 'state', ARGV[6]) end\n"
    "    if math.floor(m / 4) % 2 == 1 then w('HSET', KEYS[1], 'canary_step', ARGV[7]) end\n"
    "    above(tonumber(bump) or 1)\n"
    "  end\n"
    "  if not stale then\n"
    "    for i = 3, 2 + n do add(KEYS[i], 9 + (i - 3) * 7) end\n"
    "    local p = lat\n"
    "    for i = 1, n do p = addlat(KEYS[2 + n + i], p) end\n"
    "  end\n"
    "  if ARGV[tpos + 1] == '1' and redis.call('HGET', KEYS[#KEYS], '@def') ~= tp then\n"
    "    for _, k in ipairs(redis.call('HKEYS', KEYS[#KEYS])) do\n"
    "      if string.sub(k, 1, #tp) == tp then w('HDEL', KEYS[#KEYS], k) end\n"
    "    end\n"
    "    w('HSET', KEYS[#KEYS], '@def', tp)\n"
    "  end\n"
    "  if not stale then addtally(tdeltas) end\n"
    "end\n"
    "if (apply or restore) and (not had_ctl or not inc) and\n"
    "   redis.call('HEXISTS', KEYS[1], 'version') == 1 then\n"
    "  w('HSET', KEYS[1], 'incarnation', string.format('%s%06d', tm[1], tonumber(tm[2])))\n"
    "  if empty then\n"
    "    w('HSET', KEYS[1], 'restore_until', string.format('%.0f', now_ms + 60000))\n"
    "  end\n"
    "  if empty and not restore then\n"
    "    w('HSET', KEYS[1], 'restore_epoch', '0', 'restore_events', '-1')\n"
    "    if kind == '1' then\n"
    "      w('HSET', KEYS[1], 'restore_version', redis.call('HGET', KEYS[1], 'version'))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local out = {redis.call('HGETALL', KEYS[1])}\n"
    "for i = 3, #KEYS - 2 do out[#out + 1] = redis.call('HGETALL', KEYS[i]) end\n"
    "local t, all = {}, redis.call('HGETALL', KEYS[#KEYS])\n"
    "for i = 1, #all, 2 do\n"
    "  if string.sub(all[i], 1, #tp) == tp then\n"
    "    t[#t + 1] = string.sub(all[i], #tp + 1)\n"
    "    t[#t + 1] = all[i + 1]\n"
    "  end\n"
    "end\n"
    "out[#out + 1] = t\n"
    "out[#out + 1] = failed\n"
    "return out\n";

/* A request id waiting to be written. */
typedef struct {
    uint64_t expires_ms;
    uint32_t pair;
    uint8_t idlen;
    char id[MM_REQID_MAX];
} rq_ent_t;

/* Per-request data waiting to be written (a FIFO). */
typedef struct aq_ent_s {
    struct aq_ent_s *next;
    uint64_t expires_ms;
    uint64_t gen;
    size_t len;
    uint8_t idlen;
    char id[MM_REQID_MAX];
    char data[];
} aq_ent_t;

typedef struct {
    aq_ent_t *head, *tail;
    size_t n, bytes;
} aq_list_t;

/* A GET on behalf of feedback (a request id, per-request data), the first
 * member of lookup_t and aux_get_t. Such GETs are queued in order on the
 * one connection, so they share one deadline rule: a GET without a reply
 * after GET_TIMEOUT_MS (Redis hung, its socket still open: the round timeout
 * drops the connection only after 5 s) is answered "not found" at once, and
 * so is every new one until Redis answers again. The late reply, if any,
 * then only frees it. */
typedef struct get_s {
    struct get_s *prev, *next; /* r->gets, oldest first; unlinked once answered */
    uint64_t deadline_ms;
    int answered;
    int is_aux;
} get_t;

typedef struct {
    get_t g;
    store_t *s;
    store_aux_cb cb;
    void *arg;
    size_t idlen;
    char id[MM_REQID_MAX];
} aux_get_t;

enum { MSG_DELIVERED, MSG_ACK_QUEUED, MSG_ACK_SENT };

struct store_msg_s {
    struct store_msg_s *prev, *next;
    int state;
    unsigned deliveries;
    size_t n_fields;
    int has_nul; /* a name or value held a NUL byte: not representable as the C strings below */
    const char *id;
    const char **names;
    const char **values;
    /* pointers and strings follow */
};

/* XPENDING found these idle entries; XCLAIM is on its way. */
typedef struct {
    size_t n;
    struct {
        char id[64];
        unsigned deliveries;
    } e[];
} claim_t;

typedef struct {
    get_t g;
    store_lookup_cb cb;
    void *arg;
} lookup_t;

/* Someone waiting for a round that starts after it asked (store_flush). */
typedef struct flush_s {
    struct flush_s *next;
    uint64_t after;       /* called once rounds_done reaches this round */
    uint64_t deadline_ms; /* or then, whatever the round does */
    void (*cb)(void *);
    void *arg;
} flush_t;

struct store_redis_s {
    store_t *s;
    redisAsyncContext *ac;
    int connected; /* TCP up; `up` once PING answered */
    int up;
    int ever_up;
    int down_logged;
    int announce_up;       /* a reload moved the store: log its first "up" there */
    char refusal[256];     /* the handshake refusal last logged (logged again only if it changes) */
    const char *close_why; /* set while force_close runs */
    int readonly;          /* a replica answered READONLY and no write has been taken since */
    unsigned backoff_ms;
    uv_timer_t sync_timer, conn_timer, deadline_timer;
    uv_getaddrinfo_t gai; /* at_host is a name: its lookup */
    int resolving;
    int stale; /* the settings changed while the lookup ran: its answer is not used */
    /* The primary connected to: store.host and port, or with store.sentinel
     * what the Sentinels named last ("" until they named one). */
    char at_host[256];
    int at_port;
    sentinel_t *sentinel; /* store.sentinel: asked at each connect */
    int asking;           /* a question to the Sentinels is in flight */
    int open_handles;     /* the timers, and the lookup while it runs */
    int timers_closing;
    uint64_t seq;
    char instance[128]; /* HOSTNAME-PID-NONCE: the seq keys */
    char consumer[96];  /* HOSTNAME-PID: the stream consumer */
    char stream_key[STORE_KEY_MAX];

    /* the sync round in flight */
    int round_active;
    unsigned outstanding;
    get_t *gets, *gets_tail; /* GETs for feedback not answered yet, oldest first */
    int gets_stalled;        /* one timed out and Redis has not answered since */
    uint64_t round_started_ms;
    size_t round_req_sent;
    int round_req_failed;
    int lose_replies;
    uint64_t rounds_started, rounds_done;
    flush_t *flushes;  /* store_flush waiters, newest first */
    int flush_stalled; /* one timed out and no round has completed since */

    /* request ids to write: a ring, grown up to rq_max */
    rq_ent_t *rq;
    size_t rq_cap, rq_max, rq_head, rq_len;

    /* per-request data to write, and what the round in flight sent */
    aq_list_t aq, aq_sent;
    int round_aux_failed;

    /* feedback stream */
    store_stream_cb stream_cb;
    void *stream_arg;
    store_stream_opts_t opts;
    int group_ok;
    int group_err_logged;
    /* The stream has a backlog: the last page read was full. Then a reply
     * to XACK (room freed) asks for the next page at once, and a round that
     * ends with entries waiting for their XACK is followed by the next one at
     * once, not at the next tick (the XACK must follow the write of their
     * increments, which only a round sends). */
    int stream_behind;
    int xread_inflight;  /* an XREADGROUP is on its way: one at a time */
    size_t n_ack_queued; /* entries in MSG_ACK_QUEUED */
    uint64_t last_claim_ms;
    char claim_from[68]; /* "(ID" after a full XPENDING page: the next page, next round */
    store_msg_t *msgs;
    size_t n_msgs;

    int shutting_down, deadline_passed, closing, destroying;
    void (*done)(void *);
    void *done_arg;

    store_stats_t st;
};

static void start_round(store_redis_t *r);
static void run_flushes(store_redis_t *r);
static void aq_free(aq_list_t *l);
static void maybe_finish(store_redis_t *r);
static void on_conn_timer(uv_timer_t *t);
static void redis_connect(store_redis_t *r);

/* One line on stderr, through mm_log: with its time and process id, since
 * the workers of --workers N share one stderr. Each condition is logged when
 * it starts (and ends), never once per retry or per round. */
static void note(const store_redis_t *r, const char *fmt, ...) MM_PRINTF(2, 3);
static void note(const store_redis_t *r, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const cfg_store_t *c = &r->s->cfg;
    if (c->n_sentinels == 0)
        mm_log("store: redis %s:%d: %s", r->at_host, r->at_port, msg);
    else if (r->at_host[0])
        mm_log("store: redis %s (Sentinel) at %s:%d: %s", c->sentinel_master, r->at_host,
               r->at_port, msg);
    else
        mm_log("store: redis %s (Sentinel): %s", c->sentinel_master, msg);
}

/* Whether `now` differs from the condition last logged in `last` (cap
 * bytes), which then becomes `now`: a condition met every retry or round is
 * logged when it starts and when Redis's answer changes, not each time. */
static int changed(char *last, size_t cap, const char *now)
{
    if (strncmp(last, now, cap - 1) == 0) return 0;
    snprintf(last, cap, "%s", now);
    return 1;
}

static int can_send(const store_redis_t *r)
{
    return r->ac != NULL && r->up && !(r->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

static void key_of(char *out, const store_redis_t *r, const char *mid, const char *name)
{
    snprintf(out, STORE_KEY_MAX, "%s:%s%s", r->s->cfg.prefix, mid, name);
}

/* ---- connection ---- */

static void went_down(store_redis_t *r, const char *why)
{
    int was_up = r->up;
    r->up = 0;
    r->connected = 0;
    /* The reconnects after READONLY are logged once, by on_readonly. */
    if ((was_up && !r->readonly) || !r->down_logged) note(r, "down (%s); retrying", why);
    r->down_logged = 1;
}

static void schedule_reconnect(store_redis_t *r)
{
    if (r->closing || r->destroying) return;
    uv_timer_start(&r->conn_timer, on_conn_timer, r->backoff_ms, 0);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* One of the things that keep `r` alive (a timer, a name lookup) is gone. */
static void release(store_redis_t *r)
{
    if (--r->open_handles > 0) return;
    if (r->destroying) {
        store_t *s = r->s;
        free(r->rq);
        aq_free(&r->aq);
        aq_free(&r->aq_sent);
        free(r);
        store_free_final(s);
        return;
    }
    if (r->done) {
        void (*done)(void *) = r->done;
        r->done = NULL;
        done(r->done_arg); /* may destroy the store */
    }
}

static void on_timer_closed(uv_handle_t *h)
{
    release(h->data);
}

static void on_sentinel_closed(void *arg)
{
    release(arg);
}

static void close_timers(store_redis_t *r)
{
    /* A lookup not yet started in the pool ends now; one that runs ends
     * when the resolver gives up. Either way on_resolved releases r. */
    if (r->resolving) uv_cancel((uv_req_t *)&r->gai);
    if (r->timers_closing) return;
    r->timers_closing = 1;
    if (r->sentinel) sentinel_close(r->sentinel, on_sentinel_closed, r);
    r->sentinel = NULL;
    uv_close((uv_handle_t *)&r->sync_timer, on_timer_closed);
    uv_close((uv_handle_t *)&r->conn_timer, on_timer_closed);
    uv_close((uv_handle_t *)&r->deadline_timer, on_timer_closed);
}

/* The context is gone (hiredis frees it after this). */
static void after_disconnect(store_redis_t *r, const char *why)
{
    r->ac = NULL;
    if (r->destroying) return;
    if (r->closing) {
        r->up = 0;
        close_timers(r);
        return;
    }
    went_down(r, why);
    schedule_reconnect(r);
    maybe_finish(r); /* shutting down with nothing left to write? */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    store_redis_t *r = ac->data;
    const char *why = r->close_why         ? r->close_why
                      : r->readonly        ? "a read-only replica"
                      : status == REDIS_OK ? "connection closed"
                                           : ac->errstr;
    r->close_why = NULL;
    after_disconnect(r, why);
}

/* Drop the connection now. Never from inside a hiredis callback. Pending
 * callbacks run with a NULL reply. */
static void force_close(store_redis_t *r, const char *why)
{
    redisAsyncContext *ac = r->ac;
    if (ac == NULL) return;
    int notifies = (ac->c.flags & REDIS_CONNECTED) != 0; /* else no on_disconnect */
    r->close_why = why;
    redisAsyncFree(ac);
    r->close_why = NULL;
    if (!notifies) after_disconnect(r, why);
}

/* The handshake is done: Redis is up for us. */
static void on_hello(store_redis_t *r)
{
    uv_timer_stop(&r->conn_timer);
    r->up = 1;
    if (r->ever_up) r->st.reconnects++;
    r->ever_up = 1;
    if (!r->readonly) { /* else up only once a write is taken (on_exp_reply) */
        if (r->down_logged || r->announce_up) note(r, "up");
        r->down_logged = 0;
        r->announce_up = 0;
        r->backoff_ms = BACKOFF_MIN_MS;
    }
    r->group_ok = 0; /* a new server may not have the group */
    r->gets_stalled = 0;
    r->refusal[0] = '\0';
    if (r->shutting_down)
        maybe_finish(r);
    else
        start_round(r);
}

/* The handshake after connecting: AUTH (when a password is configured), then
 * SELECT (db != 0), then PING; each is sent once the previous one succeeded,
 * so a refused AUTH is reported once, as itself, rather than followed by a
 * NOAUTH for every later command. The connect timer covers the whole chain. */
enum { HS_AUTH, HS_SELECT, HS_PING };

static void handshake(store_redis_t *r, int step);

static void on_handshake(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    int step = (int)(intptr_t)priv;
    if (reply == NULL) return; /* the connection died: on_disconnect follows */
    if (reply->type == REDIS_REPLY_ERROR) {
        /* The reply never echoes the password, so it can be logged: once,
         * not at every retry, unless Redis's answer changes. */
        char why[sizeof(r->refusal)];
        snprintf(why, sizeof(why), "%s refused: %s",
                 step == HS_AUTH     ? "AUTH"
                 : step == HS_SELECT ? "SELECT"
                                     : "PING",
                 reply->str);
        if (changed(r->refusal, sizeof(r->refusal), why)) note(r, "%s", why);
        redisAsyncDisconnect(ac);
        return;
    }
    if (step == HS_PING)
        on_hello(r);
    else
        handshake(r, step + 1);
}

static void handshake(store_redis_t *r, int step)
{
    const cfg_store_t *c = &r->s->cfg;
    if (step == HS_AUTH && c->password[0] == '\0') step = HS_SELECT;
    if (step == HS_SELECT && c->db == 0) step = HS_PING;
    void *priv = (void *)(intptr_t)step;
    int rc;
    if (step == HS_AUTH && c->username[0])
        rc = redisAsyncCommand(r->ac, on_handshake, priv, "AUTH %s %s", c->username, c->password);
    else if (step == HS_AUTH)
        rc = redisAsyncCommand(r->ac, on_handshake, priv, "AUTH %s", c->password);
    else if (step == HS_SELECT)
        rc = redisAsyncCommand(r->ac, on_handshake, priv, "SELECT %d", c->db);
    else
        rc = redisAsyncCommand(r->ac, on_handshake, priv, "PING");
    if (rc != REDIS_OK) redisAsyncDisconnect(r->ac);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    store_redis_t *r = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this; on_disconnect does not run */
        uv_timer_stop(&r->conn_timer);
        after_disconnect(r, ac->errstr);
        return;
    }
    r->connected = 1;
    handshake(r, HS_AUTH);
}

static void connect_to(store_redis_t *r, const char *addr)
{
    redisAsyncContext *ac = redisAsyncConnect(addr, r->at_port);
    if (ac == NULL || ac->err) {
        went_down(r, ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    if (redis_glue_attach(ac, r->s->loop) != 0) {
        went_down(r, "cannot attach to the event loop");
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    uv_timer_start(&r->conn_timer, on_conn_timer, CONNECT_TIMEOUT_MS, 0);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    store_redis_t *r = container_of(req, store_redis_t, gai);
    r->resolving = 0;
    /* An IPv4 address if there is one, as hiredis itself prefers (addr.h). */
    const struct addrinfo *pick = status == 0 ? mm_addr_pick(res) : NULL;
    char addr[INET6_ADDRSTRLEN] = "";
    if (pick) uv_ip_name(pick->ai_addr, addr, sizeof(addr));
    uv_freeaddrinfo(res);
    if (r->closing || r->destroying) {
        release(r);
        return;
    }
    r->open_handles--; /* not the last: the timers are open while not closing */
    if (r->stale) {    /* looked up for the settings before a reload's */
        r->stale = 0;
        redis_connect(r);
        return;
    }
    if (addr[0] == '\0') {
        char why[300];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", r->at_host,
                 status < 0 ? uv_strerror(status) : "no address");
        went_down(r, why);
        schedule_reconnect(r);
        return;
    }
    connect_to(r, addr);
}

static int is_numeric(const char *host)
{
    unsigned char bin[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, bin) == 1 || inet_pton(AF_INET6, host, bin) == 1;
}

/* Connect to at_host, resolving a host name first in libuv's thread pool: a
 * lookup may take seconds (a DNS server that does not answer) and the loop
 * routes requests meanwhile. A numeric address is used as it is. While a
 * lookup runs it counts as an open handle, so the replicator outlives it. */
static void connect_primary(store_redis_t *r)
{
    const char *host = r->at_host;
    if (is_numeric(host)) {
        connect_to(r, host);
        return;
    }
    r->resolving = 1;
    r->open_handles++;
    int rc = mm_addr_lookup(r->s->loop, &r->gai, on_resolved, host);
    if (rc != 0) {
        r->resolving = 0;
        r->open_handles--;
        char why[300];
        snprintf(why, sizeof(why), "cannot resolve %s: %s", host, uv_strerror(rc));
        went_down(r, why);
        schedule_reconnect(r);
    }
}

/* The Sentinels' answer (sentinel.h): where the primary is, or why none
 * said. A new address is logged; the connection goes there. */
static void on_primary(void *arg, const char *host, int port, const char *why)
{
    store_redis_t *r = arg;
    r->asking = 0;
    if (r->closing || r->destroying) return;
    if (host == NULL) {
        char down[700];
        snprintf(down, sizeof(down), "no Sentinel named the primary: %s", why);
        went_down(r, down);
        schedule_reconnect(r);
        return;
    }
    if (strcmp(host, r->at_host) != 0 || port != r->at_port) {
        snprintf(r->at_host, sizeof(r->at_host), "%s", host);
        r->at_port = port;
        note(r, "the Sentinels name this the primary");
    }
    connect_primary(r);
}

/* Connect: to store.host, or where the Sentinels say the primary is now
 * (asked at every connect, so a failover is followed by the next one). */
static void redis_connect(store_redis_t *r)
{
    if (r->resolving || r->asking) return; /* its answer connects */
    if (r->sentinel == NULL) {
        connect_primary(r);
        return;
    }
    r->asking = 1;
    sentinel_ask(r->sentinel, on_primary, r);
}

/* Backoff over (connect again), or a connect/PING took too long. */
static void on_conn_timer(uv_timer_t *t)
{
    store_redis_t *r = container_of(t, store_redis_t, conn_timer);
    if (r->ac != NULL) {
        force_close(r, "connect timeout");
        return;
    }
    redis_connect(r);
}

/* ---- per experiment: the sync script ---- */

static void fmt_u64(char *out, uint64_t v)
{
    snprintf(out, 32, "%" PRIu64, v);
}

static void fmt_double(char *out, double v)
{
    if (v == 0)
        snprintf(out, 32, "0");
    else
        snprintf(out, 32, "%.17g", v);
}

/* {"arm": weight, ...} with integral weights written as integers; "{}"
 * without weights. Caller frees. */
static char *weights_json(const store_batch_t *b)
{
    if (!b->ctl.has_weights) return strdup("{}");
    json_t *o = json_object();
    if (o == NULL) return NULL;
    for (size_t i = 0; i < b->n_arms; i++) {
        double w = b->ctl.weights[i];
        json_t *v;
        if (!isfinite(w)) continue;
        if (w == (double)(json_int_t)w && w > -1e15 && w < 1e15)
            v = json_integer((json_int_t)w);
        else
            v = json_real(w);
        json_object_set_new(o, b->arm_names[i], v);
    }
    char *out = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(o);
    return out;
}

/* The control fields that differ between a and b (CTL_F_*). */
static unsigned ctl_changed_fields(const exp_state_t *e, const exp_control_t *a,
                                   const exp_control_t *b)
{
    unsigned f = 0;
    int w = a->has_weights != b->has_weights;
    for (size_t i = 0; i < e->n_arms && !w && a->has_weights; i++)
        w = a->weights[i] != b->weights[i];
    if (w) f |= CTL_F_WEIGHTS;
    if (a->state != b->state) f |= CTL_F_STATE;
    if (a->canary_step != b->canary_step) f |= CTL_F_STEP;
    return f;
}

/* Copy what is to be written into the batch (or keep a failed one as is). */
static void batch_prepare(store_redis_t *r, store_exp_t *x)
{
    store_batch_t *b = &x->batch;
    exp_state_t *e = &x->pub;
    if (b->active) return; /* a failed write: resend it unchanged */
    int writes = x->reset_pending || e->control_dirty || x->ctl_init || x->tally_clear_pending ||
                 tally_nonzero_local(e->tally);
    for (size_t i = 0; i < e->n_arms && !writes; i++)
        writes = store_stats_nonzero(&e->pending[i]) || e->answers_local[i].answers != 0;
    b->seq = writes ? ++r->seq : 0;
    b->reset = x->reset_pending;
    b->epoch_known = x->synced && !x->rebase;
    b->epoch = x->known_epoch;
    b->ctl_mode = e->control_dirty ? (x->ctl_cas ? 3 : 2) : x->ctl_init ? 1 : 0;
    b->ctl_base = x->ctl_base;
    b->ctl_changes = e->control_dirty;
    /* ... and those Redis holds unusable (ctl_log_unusable): repaired too */
    b->ctl_fields = x->ctl_known_valid
                        ? ctl_changed_fields(e, &x->ctl_known, &e->control) | x->ctl_bad
                        : CTL_F_ALL;
    b->ctl = e->control;
    b->n_arms = e->n_arms;
    b->restore = 0;
    memcpy(b->incarnation, x->incarnation, sizeof(b->incarnation));
    for (size_t i = 0; i < e->n_arms; i++) {
        memcpy(b->arm_names[i], e->arm_names[i], sizeof(b->arm_names[i]));
        b->deltas[i] = e->pending[i];
        b->base[i] = x->seen[i];
        /* answers_local stays as it is until Redis confirms the copy */
        if (e->answers_local[i].answers != 0)
            memcpy(&b->ans_deltas[i], &e->answers_local[i], sizeof(b->ans_deltas[i]));
        else
            b->ans_deltas[i].answers = 0; /* the rest is not read then */
        if (x->synced && !b->reset &&
            (store_stats_nonzero(&x->seen[i]) || e->answers[i].answers != 0))
            b->restore = 1;
    }
    b->ans_gen = x->ans_gen;
    /* The tally's local counts stay as they are until Redis confirms them. */
    mm_buf_reset(&b->tally_deltas);
    b->n_tally = tally_local_pairs(e->tally, &b->tally_deltas);
    if (b->tally_deltas.oom) b->n_tally = 0; /* sent next round */
    b->tally_gen = x->tally_gen;
    b->tally_fp = e->tally_fp;
    b->tally_clear = x->tally_clear_pending;
    x->tally_clear_pending = 0;
    memset(e->pending, 0, sizeof(e->pending));
    x->reset_pending = 0;
    e->control_dirty = 0;
    x->ctl_cas = 0;
    x->ctl_known_valid = 0;
    x->ctl_init = 0;
    b->active = 1;
}

static void on_exp_reply(redisAsyncContext *ac, void *reply_, void *priv);

/* Non-zero fields of one arm's answers, as the script takes them. */
static size_t lat_fields(const answer_stats_t *a)
{
    if (a->answers == 0) return 0;
    size_t k = 1 + (a->errors != 0);
    for (unsigned i = 0; i < LATHIST_BUCKETS; i++) k += a->hist[i] != 0;
    return k;
}

/* The argument vector of one write, sized for the whole write up front;
 * numbers are formatted into slots of their own in `nums`. */
typedef struct {
    const char **argv;
    size_t *lens;
    char (*nums)[64]; /* room for the control mode (four numbers) */
    int n, k;
} args_t;

static void arg_str(args_t *a, const char *p)
{
    a->argv[a->n++] = p;
}

static char *arg_num(args_t *a)
{
    char *slot = a->nums[a->k++];
    a->argv[a->n++] = slot;
    return slot;
}

static void arg_u64(args_t *a, uint64_t v)
{
    fmt_u64(arg_num(a), v);
}

static void arg_double(args_t *a, double v)
{
    fmt_double(arg_num(a), v);
}

/* Count, then (field, value) pairs: "n", "e", bucket indexes. */
static void arg_lat(args_t *a, const answer_stats_t *st)
{
    arg_u64(a, lat_fields(st));
    if (st->answers == 0) return;
    arg_str(a, "n");
    arg_u64(a, st->answers);
    if (st->errors != 0) {
        arg_str(a, "e");
        arg_u64(a, st->errors);
    }
    for (unsigned i = 0; i < LATHIST_BUCKETS; i++)
        if (st->hist[i] != 0) {
            arg_u64(a, i);
            arg_u64(a, st->hist[i]);
        }
}

/* Count, then n (name, value) pairs from a tally_*_pairs buffer. */
static void arg_pairs(args_t *a, const char *p, size_t n)
{
    arg_u64(a, n);
    for (size_t k = 0; k < n; k++) {
        arg_str(a, p);
        p += strlen(p) + 1;
        arg_str(a, p);
        p += strlen(p) + 1;
    }
}

/* The answer snapshot of arm `name` to restore (zero if gone). */
static const answer_stats_t *seen_answers(const store_exp_t *x, const char *name)
{
    static const answer_stats_t none;
    int i = store_arm_index(&x->pub, name);
    return i < MM_MAX_ARMS ? &x->pub.answers[i] : &none;
}

/* How much a snapshot to restore has seen: between two of one reset
 * epoch, the later one has seen more (the counts only grow). */
static uint64_t restore_rank(const store_exp_t *x, const store_batch_t *b)
{
    uint64_t n = 0;
    for (size_t i = 0; i < b->n_arms; i++)
        n += b->base[i].pulls + b->base[i].feedback + b->base[i].errors +
             seen_answers(x, b->arm_names[i])->answers;
    return n;
}

static void send_exp(store_redis_t *r, store_exp_t *x)
{
    store_batch_t *b = &x->batch;
    args_t a = {0};
    char *keys = NULL;
    mm_buf_t snap;
    size_t n_snap = 0;
    mm_buf_init(&snap);

    batch_prepare(r, x);
    /* A restore writes the tally the batch's definition had; after a
     * redefinition that is gone here, and nothing of it is written back. */
    if (b->restore && b->tally_fp == x->pub.tally_fp)
        n_snap = tally_snap_pairs(x->pub.tally, &snap);
    if (snap.oom) n_snap = 0;
    /* Restore takes the answer snapshot as it is now: it only changes when a
     * write is confirmed, and this one is not yet (a reset or a reload in
     * between does change it; the next write then DELs or rereads anyway). */
    size_t max = 22 + 2 * b->n_arms + 2 * N_FIELDS * b->n_arms + 2 * (b->n_tally + n_snap);
    for (size_t i = 0; i < b->n_arms; i++) {
        max += 1 + 2 * lat_fields(&b->ans_deltas[i]);
        if (b->restore) max += 1 + 2 * lat_fields(seen_answers(x, b->arm_names[i]));
    }
    a.argv = malloc(max * sizeof(*a.argv));
    a.lens = malloc(max * sizeof(*a.lens));
    a.nums = malloc(max * sizeof(*a.nums));
    keys = malloc((2 * MM_MAX_ARMS + 2) * STORE_KEY_MAX);
    char *weights = b->ctl_mode || b->restore ? weights_json(b) : NULL;
    if (!a.argv || !a.lens || !a.nums || !keys) {
        b->failed = 1; /* no memory: tried again next round */
        goto out;
    }

    arg_str(&a, "EVAL");
    arg_str(&a, SYNC_SCRIPT);
    arg_u64(&a, 4 + 2 * b->n_arms);
    arg_str(&a, x->ctl_key);
    arg_str(&a, x->seq_key);
    for (size_t i = 0; i < 2 * b->n_arms; i++) {
        char mid[MM_NAME_MAX + 8];
        snprintf(mid, sizeof(mid), "{%s}:%s:", x->pub.name, i < b->n_arms ? "arm" : "lat");
        char *key = keys + i * STORE_KEY_MAX;
        key_of(key, r, mid, b->arm_names[i % b->n_arms]);
        arg_str(&a, key);
    }
    {
        char mid[MM_NAME_MAX + 16];
        snprintf(mid, sizeof(mid), "{%s}:", x->pub.name);
        char *key = keys + 2 * b->n_arms * STORE_KEY_MAX;
        key_of(key, r, mid, "restored");
        arg_str(&a, key);
        key += STORE_KEY_MAX;
        key_of(key, r, mid, "tally");
        arg_str(&a, key);
    }
    arg_u64(&a, b->seq);
    arg_str(&a, SEQ_TTL_S);
    /* The last component: the version this instance knew from Redis (its
     * own changes not counted), below which a control written anew never
     * goes — after Redis lost its data, version 1 again read as older than
     * what every instance and tool had seen (DESIGN.md §6: incremented on
     * every change). */
    char *mode = arg_num(&a);
    unsigned long long floor =
        b->ctl.version > b->ctl_changes ? b->ctl.version - b->ctl_changes : 0;
    if (b->ctl_mode == 3)
        snprintf(mode, 64, "3:%u:%llu:%llu", b->ctl_changes, (unsigned long long)b->ctl_base,
                 floor);
    else if (b->ctl_mode == 2)
        snprintf(mode, 64, "2:%u::%llu:%u", b->ctl_changes, floor, b->ctl_fields);
    else
        snprintf(mode, 64, "%d:::%llu", b->ctl_mode, floor);
    /* A write kept across a move to another Redis (sent again there, as
     * is) names the old place's epoch, which says nothing at the new one. */
    if (b->reset || !b->epoch_known || x->rebase)
        arg_str(&a, b->reset ? "1" : "0");
    else
        snprintf(arg_num(&a), 32, "0:%" PRIu64, b->epoch);
    arg_str(&a, weights ? weights : "{}");
    arg_str(&a, exp_state_name(b->ctl.state));
    arg_double(&a, b->ctl.canary_step);
    arg_str(&a, b->restore ? "1" : "0");
    for (size_t i = 0; i < (b->restore ? 2 : 1) * b->n_arms; i++) {
        const arm_stats_t *d = i < b->n_arms ? &b->deltas[i] : &b->base[i - b->n_arms];
        arg_u64(&a, d->pulls);
        arg_u64(&a, d->feedback);
        arg_u64(&a, d->errors);
        arg_double(&a, d->reward_sum);
        arg_double(&a, d->reward_sq_sum);
        arg_double(&a, d->successes);
        arg_double(&a, d->failures);
    }
    for (size_t i = 0; i < b->n_arms; i++) arg_lat(&a, &b->ans_deltas[i]);
    if (b->restore)
        for (size_t i = 0; i < b->n_arms; i++) arg_lat(&a, seen_answers(x, b->arm_names[i]));
    snprintf(arg_num(&a), 32, "%016" PRIx64 "|", b->tally_fp);
    arg_str(&a, b->tally_clear ? "1" : "0");
    arg_pairs(&a, b->tally_deltas.p, b->n_tally);
    if (b->restore) {
        arg_pairs(&a, snap.p, n_snap);
        /* Which snapshot it is: the incarnation of Redis's state it was
         * read from, its reset epoch and its size (restore_rank). */
        arg_str(&a, b->incarnation);
        arg_u64(&a, b->epoch_known ? b->epoch : 0);
        arg_u64(&a, restore_rank(x, b));
    }
    for (int i = 0; i < a.n; i++) a.lens[i] = strlen(a.argv[i]);
    b->failed = 0;
    if (redisAsyncCommandArgv(r->ac, on_exp_reply, x, a.n, a.argv, a.lens) == REDIS_OK)
        r->outstanding++;
    else
        b->failed = 1;
out:
    mm_buf_free(&snap);
    free(weights);
    free(keys);
    free(a.argv);
    free(a.lens);
    free(a.nums);
}

typedef struct {
    const redisReply *weights, *state, *canary_step, *version, *epoch, *incarnation;
} ctl_fields_t;

static int str_is(const redisReply *v, const char *lit)
{
    return v->type == REDIS_REPLY_STRING && v->len == strlen(lit) &&
           memcmp(v->str, lit, v->len) == 0;
}

static void parse_ctl(const redisReply *h, ctl_fields_t *cf)
{
    memset(cf, 0, sizeof(*cf));
    if (h->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (v->type != REDIS_REPLY_STRING) continue;
        if (str_is(k, "weights"))
            cf->weights = v;
        else if (str_is(k, "state"))
            cf->state = v;
        else if (str_is(k, "canary_step"))
            cf->canary_step = v;
        else if (str_is(k, "version"))
            cf->version = v;
        else if (str_is(k, "reset_epoch"))
            cf->epoch = v;
        else if (str_is(k, "incarnation"))
            cf->incarnation = v;
    }
}

static uint64_t reply_u64(const redisReply *v)
{
    return v ? strtoull(v->str, NULL, 10) : 0;
}

static void parse_arm(const redisReply *h, arm_stats_t *a)
{
    if (h->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (v->type != REDIS_REPLY_STRING) continue;
        if (str_is(k, "pulls"))
            a->pulls = strtoull(v->str, NULL, 10);
        else if (str_is(k, "feedback"))
            a->feedback = strtoull(v->str, NULL, 10);
        else if (str_is(k, "errors"))
            a->errors = strtoull(v->str, NULL, 10);
        else if (str_is(k, "reward_sum"))
            a->reward_sum = strtod(v->str, NULL);
        else if (str_is(k, "reward_sq_sum"))
            a->reward_sq_sum = strtod(v->str, NULL);
        else if (str_is(k, "successes"))
            a->successes = strtod(v->str, NULL);
        else if (str_is(k, "failures"))
            a->failures = strtod(v->str, NULL);
    }
}

/* An answer hash: "n", "e" and bucket indexes; anything else is ignored. */
static void parse_lat(const redisReply *h, answer_stats_t *a)
{
    if (h->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || k->len == 0) continue;
        uint64_t x = strtoull(v->str, NULL, 10);
        if (str_is(k, "n")) {
            a->answers = x;
        } else if (str_is(k, "e")) {
            a->errors = x;
        } else if (k->str[0] >= '0' && k->str[0] <= '9') {
            char *end;
            unsigned long idx = strtoul(k->str, &end, 10);
            if (*end == '\0' && idx < LATHIST_BUCKETS) {
                a->hist[idx] = x;
                a->samples += x;
            }
        }
    }
}

/* Control as Redis has it, onto a copy of ours (fields that do not parse
 * keep our value). Weights name arms; arms not named get 0, and weights that
 * leave every arm of ours at 0 count as no weights. Returns the fields
 * present but unusable (CTL_F_*). */
static unsigned ctl_from_fields(const exp_state_t *e, const ctl_fields_t *cf, exp_control_t *c)
{
    unsigned bad = 0;
    if (cf->weights) {
        json_t *o = json_loadb(cf->weights->str, cf->weights->len, 0, NULL);
        if (!json_is_object(o) &&
            !(cf->weights->len == 4 && memcmp(cf->weights->str, "null", 4) == 0))
            bad |= CTL_F_WEIGHTS;
        if (json_is_object(o)) {
            double sum = 0;
            for (size_t i = 0; i < e->n_arms; i++) {
                json_t *v = json_object_get(o, e->arm_names[i]);
                double w = json_is_number(v) ? json_number_value(v) : 0;
                c->weights[i] = isfinite(w) && w > 0 ? w : 0;
                sum += c->weights[i];
            }
            for (size_t i = e->n_arms; i < MM_MAX_ARMS; i++) c->weights[i] = 0;
            c->has_weights = sum > 0;
        }
        json_decref(o);
    }
    if (cf->state && exp_state_parse(cf->state->str, cf->state->len, &c->state) != 0)
        bad |= CTL_F_STATE;
    if (cf->canary_step) {
        /* A percent, as a deployment tool may write it: anything else (NaN,
         * 250, -3, text) is ignored like bad weights, so the view, the
         * gauge and the router never disagree on a step outside [0, 100]. */
        char *end;
        double step = strtod(cf->canary_step->str, &end);
        if (end != cf->canary_step->str && *end == '\0' && step >= 0.0 && step <= 100.0)
            c->canary_step = step;
        else
            bad |= CTL_F_STEP;
    }
    c->version = reply_u64(cf->version);
    return bad;
}

/* Unusable control fields are logged once, when the set of them changes:
 * an instance that started since keeps its config's value where the running
 * ones keep theirs, and the fleet would diverge without a word. */
static void ctl_log_unusable(store_exp_t *x, unsigned bad)
{
    if (bad == x->ctl_bad) return;
    x->ctl_bad = bad;
    if (bad == 0) return;
    static const char *const names[] = {"weights", "state", "canary_step"};
    char list[64] = "";
    size_t n = 0;
    for (unsigned i = 0; i < 3; i++)
        if (bad & (1u << i))
            n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", n ? ", " : "", names[i]);
    mm_log("store: experiment %s: Redis's control holds unusable fields (%s); this instance "
           "keeps its own values for them (an operator's change through the admin API writes "
           "them anew)",
           x->pub.name, list);
}

static void add_stats(arm_stats_t *a, const arm_stats_t *b)
{
    a->pulls += b->pulls;
    a->feedback += b->feedback;
    a->errors += b->errors;
    a->reward_sum += b->reward_sum;
    a->reward_sq_sum += b->reward_sq_sum;
    a->successes += b->successes;
    a->failures += b->failures;
}

/* The tally hash as the script read it (with this write's counts in it). */
static void apply_tally(store_exp_t *x, const redisReply *h)
{
    exp_state_t *e = &x->pub;
    const store_batch_t *b = &x->batch;
    if (b->tally_gen == x->tally_gen) tally_confirm(e->tally, b->tally_deltas.p, b->n_tally);
    /* Another definition's hash (a reload since), or our reset not written
     * yet: the next round reads the right one. */
    if (b->tally_fp != e->tally_fp || x->reset_pending) {
        if (x->reset_pending) tally_snap_zero(e->tally);
        return;
    }
    tally_snap_zero(e->tally);
    if (h->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        char *end;
        unsigned long long n = strtoull(v->str, &end, 10);
        if (end != v->str && *end == '\0' && v->str[0] != '-') /* another tool's junk: skipped */
            tally_snap_set(e->tally, k->str, k->len, n);
    }
}

/* The script answered: fold the global snapshot into the local state. */
static void apply_snapshot(store_exp_t *x, const redisReply *reply)
{
    exp_state_t *e = &x->pub;
    const store_batch_t *b = &x->batch;
    ctl_fields_t cf;
    parse_ctl(reply->element[0], &cf);

    uint64_t epoch = reply_u64(cf.epoch);
    if (b->reset || !x->synced || x->rebase)
        x->known_epoch = epoch;
    else if (epoch != x->known_epoch) {
        /* Another instance reset the experiment (0: Redis lost its data). */
        if (epoch != 0) {
            /* The script did not apply this write's deltas (the same
             * test, see SYNC_SCRIPT): dropped, like the ones still here. */
            for (size_t i = 0; i < b->n_arms && b->epoch_known; i++)
                x->pub.dropped += b->deltas[i].pulls + b->deltas[i].feedback + b->deltas[i].errors;
            store_exp_remote_reset(x);
        }
        x->known_epoch = epoch;
    }
    /* 0 is Redis without data (lost, or never reset): no reset, the mark
     * stays. A new epoch is a reset every instance reads alike; the resets
     * counted here up to now are in it. */
    if (epoch != 0 && epoch != x->mark_epoch) {
        x->mark_epoch = epoch;
        x->mark_resets = x->resets;
    }
    x->rebase = 0;
    /* The incarnation the snapshot below belongs to (none: before
     * incarnations, or junk): what a restore of it names. */
    x->incarnation[0] = '\0';
    if (cf.incarnation && cf.incarnation->len < sizeof(x->incarnation))
        memcpy(x->incarnation, cf.incarnation->str, cf.incarnation->len + 1);

    for (size_t i = 0; i < e->n_arms; i++) {
        arm_stats_t snap = {0};
        answer_stats_t *ans = &e->answers[i];
        memset(ans, 0, sizeof(*ans));
        for (size_t j = 0; j < b->n_arms; j++)
            if (strcmp(b->arm_names[j], e->arm_names[i]) == 0) {
                parse_arm(reply->element[1 + j], &snap);
                parse_lat(reply->element[1 + b->n_arms + j], ans);
                /* Redis has this write's answers now (or a reset dropped
                 * answers_local since, and them with it). */
                if (b->ans_gen == x->ans_gen)
                    store_answers_sub(&e->answers_local[i], &b->ans_deltas[j]);
            }
        if (x->reset_pending) { /* our reset is not written yet */
            memset(&snap, 0, sizeof(snap));
            memset(ans, 0, sizeof(*ans));
        }
        x->seen[i] = snap;
        add_stats(&snap, &e->pending[i]);
        e->merged[i] = snap;
    }
    apply_tally(x, reply->element[1 + 2 * b->n_arms]);

    if (!e->control_dirty) { /* else our newer change is written next round */
        if (cf.version) {
            exp_control_t c = e->control;
            ctl_log_unusable(x, ctl_from_fields(e, &cf, &c));
            store_exp_adopt_control(x, &c);
        } else {
            x->ctl_init = 1; /* Redis has no control (flushed or restarted empty): seed it */
        }
    }
    x->synced = 1;
}

static void aux_round_done(store_redis_t *r);

static void round_part_done(store_redis_t *r)
{
    if (r->outstanding > 0 || !r->round_active) return;
    r->round_active = 0;
    if (r->round_req_sent && !r->round_req_failed) {
        r->rq_head = (r->rq_head + r->round_req_sent) % r->rq_cap;
        r->rq_len -= r->round_req_sent;
    }
    r->round_req_sent = 0;
    aux_round_done(r);
    r->st.syncs++;
    r->rounds_done = r->rounds_started;
    r->flush_stalled = 0;
    run_flushes(r);
    maybe_finish(r);
    if (r->stream_behind && r->n_ack_queued > 0 && !r->round_active && !r->shutting_down)
        start_round(r);
}

/* A replica answered a write with READONLY: the address led to a replica,
 * as a DNS name or a virtual IP does for a while after a failover moved the
 * primary, until it is connected again. So (the usual advice for READONLY
 * after a failover behind ElastiCache's primary endpoint or a Kubernetes
 * Service) the connection is dropped once its replies are in, and the next
 * connect resolves the host again. Meanwhile the refused write is kept
 * (on_exp_reply). The backoff keeps doubling over these reconnects (to
 * BACKOFF_MAX_MS) until a write is taken, so a store that is configured at
 * a replica is asked every 5 s, logged once, not flooded. */
static void on_readonly(store_redis_t *r, redisAsyncContext *ac)
{
    if (!r->readonly)
        note(r,
             "%s:%d is a read-only replica (READONLY); connecting again until it leads to a "
             "primary",
             r->at_host, r->at_port);
    r->readonly = 1;
    redisAsyncDisconnect(ac); /* after the replies still due on it */
}

static void on_exp_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    store_exp_t *x = priv;
    redisReply *reply = reply_;
    store_batch_t *b = &x->batch;
    r->outstanding--;
    if (x->detached) { /* removed by a reload: its reply is of no use now */
        b->active = 0;
        store_detached_done(r->s, x);
    } else if (reply != NULL && r->lose_replies > 0) {
        r->lose_replies--;
        b->failed = 1;
        r->st.sync_errors++;
    } else if (reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
               reply->elements == 3 + 2 * b->n_arms) {
        const redisReply *failed = reply->element[2 + 2 * b->n_arms];
        apply_snapshot(x, reply);
        b->active = 0;
        if (x->refused) note(r, "write of experiment %s accepted again", x->pub.name);
        x->refused = 0;
        if (r->readonly) { /* a primary at last: on_hello's part, held until now */
            r->readonly = 0;
            r->down_logged = 0;
            r->backoff_ms = BACKOFF_MIN_MS;
        }
        if (failed->type == REDIS_REPLY_STRING && failed->len > 0) {
            /* Applied but for the commands Redis refused in it: logged
             * once per distinct answer, not once per round. */
            r->st.sync_errors++;
            if (changed(x->partial, sizeof(x->partial), failed->str))
                note(r,
                     "write of experiment %s applied in part: %s; what the refused commands "
                     "carried is lost",
                     x->pub.name, failed->str);
        }
    } else {
        /* Lost (NULL: the connection dropped), or refused. A script
         * refused before its first write (OOM, a read-only replica, a
         * failed save) changed nothing; one that failed after it (a key of
         * the wrong type at the final HGETALL) is a no-op when sent again
         * (SYNC_SCRIPT). So it is kept and sent again every round, like a
         * lost one, until Redis takes it: dropping it would lose what was
         * acknowledged. The store says it is down meanwhile
         * (store_redis_writable). */
        b->failed = 1;
        r->st.sync_errors++;
        if (reply != NULL && !x->refused) {
            x->refused = 1;
            note(r, "write of experiment %s refused: %s; kept, and sent again every round",
                 x->pub.name, reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
        }
        if (reply != NULL && reply->type == REDIS_REPLY_ERROR &&
            strncmp(reply->str, "READONLY", 8) == 0)
            on_readonly(r, ac);
    }
    round_part_done(r);
}

/* ---- request ids ---- */

static int rq_grow(store_redis_t *r)
{
    size_t cap = r->rq_cap ? r->rq_cap * 2 : 1024;
    if (cap > r->rq_max) cap = r->rq_max;
    rq_ent_t *n = malloc(cap * sizeof(*n));
    if (n == NULL) return -1;
    for (size_t i = 0; i < r->rq_len; i++) n[i] = r->rq[(r->rq_head + i) % r->rq_cap];
    free(r->rq);
    r->rq = n;
    r->rq_cap = cap;
    r->rq_head = 0;
    return 0;
}

void store_redis_remember(store_redis_t *r, const char *id, size_t idlen, uint32_t pair,
                          uint64_t expires_ms)
{
    if (r->rq_len == r->rq_cap && (r->rq_cap >= r->rq_max || rq_grow(r) != 0)) {
        r->st.req_dropped++;
        return;
    }
    rq_ent_t *q = &r->rq[(r->rq_head + r->rq_len) % r->rq_cap];
    q->expires_ms = expires_ms;
    q->pair = pair;
    q->idlen = (uint8_t)idlen;
    memcpy(q->id, id, idlen);
    r->rq_len++;
}

static void on_set_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    MM_UNUSED(priv);
    r->outstanding--;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) r->round_req_failed = 1;
    round_part_done(r);
}

static void send_reqs(store_redis_t *r)
{
    uint64_t now = mm_now_ms();
    size_t n = r->rq_len < REQ_PER_ROUND ? r->rq_len : REQ_PER_ROUND;
    r->round_req_failed = 0;
    for (size_t k = 0; k < n; k++) {
        const rq_ent_t *q = &r->rq[(r->rq_head + k) % r->rq_cap];
        r->round_req_sent++;
        if (q->expires_ms <= now) continue; /* too late to matter */
        char key[STORE_KEY_MAX], px[32];
        int kl = snprintf(key, sizeof(key), "%s:req:%.*s", r->s->cfg.prefix, (int)q->idlen, q->id);
        fmt_u64(px, q->expires_ms - now);
        const req_pair_t *p = store_pair(r->s, q->pair);
        const char *argv[5] = {"SET", key, p->text, "PX", px};
        size_t lens[5] = {3, (size_t)kl, p->text_len, 2, strlen(px)};
        if (redisAsyncCommandArgv(r->ac, on_set_reply, NULL, 5, argv, lens) == REDIS_OK)
            r->outstanding++;
        else
            r->round_req_failed = 1;
    }
}

static void get_link(store_redis_t *r, get_t *g, int is_aux)
{
    g->deadline_ms = mm_now_ms() + GET_TIMEOUT_MS;
    g->answered = 0;
    g->is_aux = is_aux;
    g->next = NULL;
    g->prev = r->gets_tail;
    if (r->gets_tail)
        r->gets_tail->next = g;
    else
        r->gets = g;
    r->gets_tail = g;
}

/* 1 if the GET still has to be answered (and is now marked answered). */
static int get_answer(store_redis_t *r, get_t *g)
{
    if (g->answered) return 0;
    g->answered = 1;
    if (g->prev)
        g->prev->next = g->next;
    else
        r->gets = g->next;
    if (g->next)
        g->next->prev = g->prev;
    else
        r->gets_tail = g->prev;
    return 1;
}

static void get_replied(store_redis_t *r, const redisReply *reply)
{
    if (reply != NULL) r->gets_stalled = 0;
}

static void on_get_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    lookup_t *l = priv;
    store_redis_t *r = ac->data;
    store_reqinfo_t info;
    get_replied(r, reply);
    int found = reply != NULL && reply->type == REDIS_REPLY_STRING &&
                store_parse_pair(reply->str, reply->len, &info) == 0;
    int answer = get_answer(r, &l->g);
    store_lookup_cb cb = l->cb;
    void *arg = l->arg;
    free(l);
    if (answer) cb(arg, found, found ? &info : NULL);
}

void store_redis_lookup(store_redis_t *r, mm_str_t id, store_lookup_cb cb, void *arg)
{
    lookup_t *l = can_send(r) && !r->gets_stalled ? malloc(sizeof(*l)) : NULL;
    if (l == NULL) {
        cb(arg, 0, NULL);
        return;
    }
    l->cb = cb;
    l->arg = arg;
    char key[STORE_KEY_MAX];
    int kl = snprintf(key, sizeof(key), "%s:req:%.*s", r->s->cfg.prefix, (int)id.n, id.p);
    const char *argv[2] = {"GET", key};
    size_t lens[2] = {3, (size_t)kl};
    if (redisAsyncCommandArgv(r->ac, on_get_reply, l, 2, argv, lens) != REDIS_OK) {
        free(l);
        cb(arg, 0, NULL);
        return;
    }
    get_link(r, &l->g, 0);
}

/* ---- per-request data ---- */

static void aq_push(aq_list_t *l, aq_ent_t *q)
{
    q->next = NULL;
    if (l->tail)
        l->tail->next = q;
    else
        l->head = q;
    l->tail = q;
    l->n++;
    l->bytes += q->len;
}

static aq_ent_t *aq_pop(aq_list_t *l)
{
    aq_ent_t *q = l->head;
    if (q == NULL) return NULL;
    l->head = q->next;
    if (l->head == NULL) l->tail = NULL;
    l->n--;
    l->bytes -= q->len;
    return q;
}

static void aq_free(aq_list_t *l)
{
    aq_ent_t *q;
    while ((q = aq_pop(l)) != NULL) free(q);
}

static int aux_key(char *out, const store_redis_t *r, const char *id, size_t idlen)
{
    return snprintf(out, STORE_KEY_MAX, "%s:il:%.*s", r->s->cfg.prefix, (int)idlen, id);
}

void store_redis_put_aux(store_redis_t *r, const char *id, size_t idlen, const char *data, size_t n,
                         uint64_t expires_ms, uint64_t gen)
{
    aq_ent_t *q = NULL;
    if (r->aq.n < STORE_AUX_QUEUE_DEFAULT && r->aq.bytes + n <= STORE_AUX_QUEUE_BYTES)
        q = malloc(sizeof(*q) + n);
    if (q == NULL) {
        r->st.aux_dropped++;
        return;
    }
    q->expires_ms = expires_ms;
    q->gen = gen;
    q->len = n;
    q->idlen = (uint8_t)idlen;
    memcpy(q->id, id, idlen);
    if (n > 0) memcpy(q->data, data, n);
    aq_push(&r->aq, q);
}

static void on_aux_set_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    aq_ent_t *q = priv;
    r->outstanding--;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        r->round_aux_failed = 1;
    else
        store_aux_confirm(r->s, q->id, q->idlen, q->gen);
    round_part_done(r);
}

static void send_aux(store_redis_t *r)
{
    uint64_t now = mm_now_ms();
    r->round_aux_failed = 0;
    for (size_t k = 0; k < AUX_PER_ROUND && r->aq.head != NULL; k++) {
        aq_ent_t *q = aq_pop(&r->aq);
        if (q->expires_ms <= now || !store_aux_current(r->s, q->id, q->idlen, q->gen)) {
            free(q); /* too late to matter, or a newer version follows */
            continue;
        }
        aq_push(&r->aq_sent, q);
        char key[STORE_KEY_MAX], px[32];
        int kl = aux_key(key, r, q->id, q->idlen);
        fmt_u64(px, q->expires_ms - now);
        const char *argv[5] = {"SET", key, q->data, "PX", px};
        size_t lens[5] = {3, (size_t)kl, q->len, 2, strlen(px)};
        store_aux_sent(r->s, q->id, q->idlen, q->gen);
        if (redisAsyncCommandArgv(r->ac, on_aux_set_reply, q, 5, argv, lens) == REDIS_OK)
            r->outstanding++;
        else
            r->round_aux_failed = 1;
    }
}

/* The round is over: what was sent is done, or (any failure) goes back to
 * the front of the queue, in order, to be sent again. */
static void aux_round_done(store_redis_t *r)
{
    if (r->aq_sent.head == NULL) return;
    if (!r->round_aux_failed) {
        aq_free(&r->aq_sent);
        return;
    }
    r->aq_sent.tail->next = r->aq.head;
    if (r->aq.tail == NULL) r->aq.tail = r->aq_sent.tail;
    r->aq.head = r->aq_sent.head;
    r->aq.n += r->aq_sent.n;
    r->aq.bytes += r->aq_sent.bytes;
    memset(&r->aq_sent, 0, sizeof(r->aq_sent));
    r->round_aux_failed = 0;
}

static void on_aux_get_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    aux_get_t *g = priv;
    store_redis_t *r = ac->data;
    get_replied(r, reply);
    int found = reply != NULL && reply->type == REDIS_REPLY_STRING;
    if (get_answer(r, &g->g))
        store_aux_resolved(g->s, (mm_str_t){g->id, g->idlen}, found, found ? reply->str : NULL,
                           found ? reply->len : 0, g->cb, g->arg);
    free(g);
}

void store_redis_get_aux(store_redis_t *r, mm_str_t id, store_aux_cb cb, void *arg)
{
    aux_get_t *g =
        can_send(r) && !r->gets_stalled && id.n <= MM_REQID_MAX ? malloc(sizeof(*g)) : NULL;
    if (g == NULL) {
        store_aux_resolved(r->s, id, 0, NULL, 0, cb, arg);
        return;
    }
    g->s = r->s;
    g->cb = cb;
    g->arg = arg;
    g->idlen = id.n;
    memcpy(g->id, id.p, id.n);
    char key[STORE_KEY_MAX];
    int kl = aux_key(key, r, id.p, id.n);
    const char *argv[2] = {"GET", key};
    size_t lens[2] = {3, (size_t)kl};
    if (redisAsyncCommandArgv(r->ac, on_aux_get_reply, g, 2, argv, lens) != REDIS_OK) {
        free(g);
        store_aux_resolved(r->s, id, 0, NULL, 0, cb, arg);
        return;
    }
    get_link(r, &g->g, 1);
}

/* ---- per-request data: compare-and-set (store_update_aux) ----
 *
 * A click reads an impression's attribution, marks the item and writes it
 * back. Two instances doing that at once must not both start from the same
 * version: each would count the impression's first click, and the later SET
 * would erase the other's mark. So the write is a compare-and-set: Redis
 * replaces the value only if it is still the one the rewrite saw, else
 * answers with the newer one, and the rewrite runs again on it. With
 * restore = 1 (this instance holds the version it starts from) a key Redis
 * lost is written anyway, as a plain SET would have. The value compared is
 * the whole attribution (under a kilobyte for k = 10): cheaper than a version
 * counter kept beside it, and nothing else to keep in step.
 *
 * Without a local copy the first version is read as any click's GET is
 * (store_redis_get_aux, with its deadline: nothing is written yet). A
 * compare-and-set then waits for Redis's answer or for the connection to
 * drop (the round timeout drops a hung one after 5 s), never for a deadline:
 * an answer given up on could still land, and its deltas would then be
 * lost. If the connection drops first, the update falls back to the local
 * version, as with Redis down. */
static const char AUX_CAS_SCRIPT[] = "local v = redis.call('GET', KEYS[1])\n"
                                     "if v == ARGV[1] or (not v and ARGV[4] == '1') then\n"
                                     "  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n"
                                     "  return 1\n"
                                     "end\n"
                                     "return v\n";

typedef struct {
    store_redis_t *r;
    store_aux_rewrite_cb rewrite;
    store_aux_done_cb done;
    void *arg;
    int ttl_s;
    int tries;
    int restore;
    mm_buf_t seen; /* the version the rewrite saw */
    mm_buf_t next; /* what it made of it */
    size_t idlen;
    char id[MM_REQID_MAX];
} aux_upd_t;

static void upd_finish(aux_upd_t *u, int code)
{
    store_aux_done_cb done = u->done;
    void *arg = u->arg;
    mm_buf_free(&u->seen);
    mm_buf_free(&u->next);
    free(u);
    done(arg, code);
}

/* Redis went away with the update in flight: the local version decides. */
static void upd_lost(aux_upd_t *u)
{
    store_redis_t *r = u->r;
    if (r->destroying) {
        upd_finish(u, STORE_AUX_NOT_FOUND);
        return;
    }
    mm_str_t id = {u->id, u->idlen};
    store_aux_rewrite_cb rewrite = u->rewrite;
    store_aux_done_cb done = u->done;
    void *arg = u->arg;
    int ttl_s = u->ttl_s;
    mm_buf_free(&u->seen);
    mm_buf_free(&u->next);
    free(u); /* before: the fallback may call done, which may start another */
    store_aux_update_local(r->s, id, ttl_s, rewrite, done, arg);
}

static void on_upd_cas(redisAsyncContext *ac, void *reply_, void *priv);

/* Rewrite the version in u->seen and send the compare-and-set. */
static void upd_try(aux_upd_t *u)
{
    store_redis_t *r = u->r;
    mm_buf_reset(&u->next);
    int code = u->rewrite(u->arg, u->seen.p ? u->seen.p : "", u->seen.len, &u->next);
    if (code != STORE_AUX_WRITE || u->seen.oom || u->next.oom) {
        upd_finish(u, code != STORE_AUX_WRITE ? code : STORE_AUX_NOT_FOUND);
        return;
    }
    if (!can_send(r)) {
        upd_lost(u);
        return;
    }
    char key[STORE_KEY_MAX], px[32];
    int kl = aux_key(key, r, u->id, u->idlen);
    fmt_u64(px, (uint64_t)u->ttl_s * 1000u);
    const char *argv[8] = {"EVAL",
                           AUX_CAS_SCRIPT,
                           "1",
                           key,
                           u->seen.p ? u->seen.p : "",
                           u->next.p ? u->next.p : "",
                           px,
                           u->restore ? "1" : "0"};
    size_t lens[8] = {
        4, sizeof(AUX_CAS_SCRIPT) - 1, 1, (size_t)kl, u->seen.len, u->next.len, strlen(px), 1};
    if (redisAsyncCommandArgv(r->ac, on_upd_cas, u, 8, argv, lens) != REDIS_OK) upd_lost(u);
}

/* A newer version from Redis: the rewrite runs again on it. */
static void upd_again(aux_upd_t *u, const redisReply *reply)
{
    if (++u->tries >= STORE_AUX_TRIES) {
        upd_finish(u, STORE_AUX_NOT_FOUND);
        return;
    }
    mm_buf_reset(&u->seen);
    mm_buf_append(&u->seen, reply->str, reply->len);
    upd_try(u);
}

static void on_upd_cas(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)ac;
    redisReply *reply = reply_;
    aux_upd_t *u = priv;
    if (reply == NULL) {
        upd_lost(u);
    } else if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
        store_aux_settled(u->r->s, (mm_str_t){u->id, u->idlen}, u->next.p ? u->next.p : "",
                          u->next.len, u->ttl_s);
        upd_finish(u, STORE_AUX_WRITE);
    } else if (reply->type == REDIS_REPLY_STRING) {
        upd_again(u, reply);
    } else {
        if (reply->type == REDIS_REPLY_ERROR) note(u->r, "compare-and-set failed: %s", reply->str);
        upd_finish(u, STORE_AUX_NOT_FOUND); /* gone (expired), or refused */
    }
}

/* The first version, read as any click reads it (store_redis_get_aux: the
 * GET deadline applies, which is safe before anything is written). */
static void on_upd_read(void *arg, int found, const char *data, size_t n)
{
    aux_upd_t *u = arg;
    if (!found) {
        upd_finish(u, STORE_AUX_NOT_FOUND);
        return;
    }
    mm_buf_append(&u->seen, data, n);
    upd_try(u);
}

void store_redis_update_aux(store_redis_t *r, mm_str_t id, const char *local, size_t local_n,
                            int ttl_s, store_aux_rewrite_cb rewrite, store_aux_done_cb done,
                            void *arg)
{
    aux_upd_t *u = id.n <= MM_REQID_MAX && can_send(r) ? calloc(1, sizeof(*u)) : NULL;
    if (u == NULL) {
        store_aux_update_local(r->s, id, ttl_s, rewrite, done, arg);
        return;
    }
    u->r = r;
    u->rewrite = rewrite;
    u->done = done;
    u->arg = arg;
    u->ttl_s = ttl_s;
    u->idlen = id.n;
    memcpy(u->id, id.p, id.n);
    mm_buf_init(&u->seen);
    mm_buf_init(&u->next);
    if (local != NULL) {
        u->restore = 1;
        mm_buf_append(&u->seen, local, local_n);
        upd_try(u);
        return;
    }
    store_redis_get_aux(r, id, on_upd_read, u);
}

/* Answer "not found" every GET past its deadline (they are in deadline
 * order); the entries stay with hiredis until their reply or disconnect. */
static void expire_gets(store_redis_t *r)
{
    uint64_t now = mm_now_ms();
    while (r->gets != NULL && r->gets->deadline_ms <= now) {
        get_t *g = r->gets;
        get_answer(r, g);
        r->gets_stalled = 1;
        if (g->is_aux) {
            aux_get_t *a = container_of(g, aux_get_t, g);
            store_aux_resolved(a->s, (mm_str_t){a->id, a->idlen}, 0, NULL, 0, a->cb, a->arg);
        } else {
            lookup_t *l = container_of(g, lookup_t, g);
            l->cb(l->arg, 0, NULL);
        }
    }
}

/* ---- feedback stream ---- */

static void msg_unlink(store_redis_t *r, store_msg_t *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else
        r->msgs = m->next;
    if (m->next) m->next->prev = m->prev;
    r->n_msgs--;
}

static store_msg_t *msg_find(const store_redis_t *r, const char *id, size_t n)
{
    for (store_msg_t *m = r->msgs; m; m = m->next)
        if (strlen(m->id) == n && memcmp(m->id, id, n) == 0) return m;
    return NULL;
}

/* One entry [id, [field, value, ...]] into a message, delivered. */
static void deliver(store_redis_t *r, const redisReply *entry, unsigned deliveries)
{
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2) return;
    const redisReply *id = entry->element[0], *f = entry->element[1];
    if (id->type != REDIS_REPLY_STRING || f->type != REDIS_REPLY_ARRAY) return;
    size_t nf = f->elements / 2;
    size_t size = sizeof(store_msg_t) + 2 * nf * sizeof(char *) + id->len + 1;
    for (size_t i = 0; i < 2 * nf; i++)
        size += (f->element[i]->type == REDIS_REPLY_STRING ? f->element[i]->len : 0) + 1;
    store_msg_t *m = malloc(size);
    if (m == NULL) return; /* stays pending: claimed again later */
    m->names = (const char **)(m + 1);
    m->values = m->names + nf;
    char *p = (char *)(m->values + nf);
    memcpy(p, id->str, id->len);
    p[id->len] = '\0';
    m->id = p;
    p += id->len + 1;
    m->has_nul = 0;
    for (size_t i = 0; i < 2 * nf; i++) {
        const redisReply *v = f->element[i];
        size_t n = v->type == REDIS_REPLY_STRING ? v->len : 0;
        if (n && memchr(v->str, '\0', n)) m->has_nul = 1;
        memcpy(p, n ? v->str : "", n);
        p[n] = '\0';
        if (i % 2 == 0)
            m->names[i / 2] = p;
        else
            m->values[i / 2] = p;
        p += n + 1;
    }
    m->n_fields = nf;
    m->deliveries = deliveries;
    m->state = MSG_DELIVERED;
    m->prev = NULL;
    m->next = r->msgs;
    if (r->msgs) r->msgs->prev = m;
    r->msgs = m;
    r->n_msgs++;
    r->st.stream_delivered++;
    r->stream_cb(r->stream_arg, m); /* may answer (and free m) right away */
}

static void on_group_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    MM_UNUSED(priv);
    r->outstanding--;
    if (reply != NULL) {
        if (reply->type != REDIS_REPLY_ERROR || strncmp(reply->str, "BUSYGROUP", 9) == 0) {
            if (r->group_err_logged) note(r, "XGROUP CREATE %s: done", r->stream_key);
            r->group_ok = 1;
            r->group_err_logged = 0;
        } else if (!r->group_err_logged) { /* tried again every round: logged once */
            note(r, "XGROUP CREATE %s: %s; the feedback stream is not read until it succeeds",
                 r->stream_key, reply->str);
            r->group_err_logged = 1;
        }
    }
    round_part_done(r);
}

static void read_stream(store_redis_t *r);

/* priv: the page size asked for. A full page means the stream holds more:
 * the next page is asked for at once, in this round, while there is room
 * (max_inflight), instead of one page per sync_ms, which capped an instance
 * at 1 000 entries a second and let any faster producer build a backlog for
 * good. Each page is a round trip, so the loop serves requests between
 * pages. */
static void on_xread_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    size_t asked = (size_t)(uintptr_t)priv, got = 0;
    r->outstanding--;
    r->xread_inflight = 0;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        r->group_ok = 0; /* NOGROUP after the stream was deleted: create it again */
    } else if (reply != NULL && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements; i++) {
            const redisReply *st = reply->element[i];
            if (st->type != REDIS_REPLY_ARRAY || st->elements != 2) continue;
            const redisReply *entries = st->element[1];
            if (entries->type != REDIS_REPLY_ARRAY) continue;
            for (size_t j = 0; j < entries->elements; j++) deliver(r, entries->element[j], 1);
            got += entries->elements;
        }
    }
    r->stream_behind = reply != NULL && got >= asked;
    if (r->stream_behind) read_stream(r);
    round_part_done(r);
}

static void on_xclaim_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    claim_t *c = priv;
    r->outstanding--;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements; i++) {
            const redisReply *en = reply->element[i];
            if (en->type != REDIS_REPLY_ARRAY || en->elements != 2) continue; /* deleted entry */
            const redisReply *id = en->element[0];
            unsigned d = 1;
            for (size_t j = 0; j < c->n; j++)
                if (id->type == REDIS_REPLY_STRING && strlen(c->e[j].id) == id->len &&
                    memcmp(c->e[j].id, id->str, id->len) == 0)
                    d = c->e[j].deliveries + 1;
            deliver(r, en, d);
        }
    }
    free(c);
    round_part_done(r);
}

/* A round's command whose integer answer adds to a counter (priv): entries
 * acknowledged dead, entries trimmed. */
static void on_count_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    uint64_t *count = priv;
    r->outstanding--;
    if (reply != NULL && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0)
        *count += (uint64_t)reply->integer;
    round_part_done(r);
}

/* Where the next XPENDING page starts: after this full page's last entry,
 * or (a short page, an error) nowhere, and the next pass waits its turn.
 * Paging on at once keeps the claim rate above the rate at which entries
 * go pending: one page per pass (100 entries per 15 s) fell behind for good
 * as soon as more than 7 feedback events a second named an unknown id, and
 * the pending list grew without bound. */
static void claim_next_page(store_redis_t *r, const redisReply *reply, size_t asked)
{
    r->claim_from[0] = '\0';
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements < asked) return;
    const redisReply *last = reply->element[reply->elements - 1];
    if (last->type != REDIS_REPLY_ARRAY || last->elements < 1) return;
    const redisReply *id = last->element[0];
    if (id->type == REDIS_REPLY_STRING && id->len + 2 <= sizeof(r->claim_from))
        snprintf(r->claim_from, sizeof(r->claim_from), "(%s", id->str);
}

/* XPENDING IDLE answered: entries idle long enough, held by anyone. */
static void on_xpending_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    r->outstanding--;
    claim_next_page(r, reply, (size_t)(uintptr_t)priv);
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 && can_send(r)) {
        size_t n = reply->elements;
        claim_t *c = malloc(sizeof(*c) + n * sizeof(c->e[0]));
        const char **argv = malloc((6 + n) * sizeof(*argv));
        size_t *lens = malloc((6 + n) * sizeof(*lens));
        char idle[32];
        fmt_u64(idle, (uint64_t)r->opts.claim_idle_ms);
        if (c && argv && lens) {
            int na = 0;
            argv[na++] = "XCLAIM";
            argv[na++] = r->stream_key;
            argv[na++] = GROUP;
            argv[na++] = r->consumer;
            argv[na++] = idle;
            c->n = 0;
            for (size_t i = 0; i < n; i++) {
                const redisReply *p = reply->element[i];
                if (p->type != REDIS_REPLY_ARRAY || p->elements < 4) continue;
                const redisReply *id = p->element[0], *cnt = p->element[3];
                if (id->type != REDIS_REPLY_STRING || id->len >= sizeof(c->e[0].id)) continue;
                const redisReply *who = p->element[1];
                int mine = who->type == REDIS_REPLY_STRING && who->len == strlen(r->consumer) &&
                           memcmp(who->str, r->consumer, who->len) == 0;
                /* ours, still being handled (the scan only for ours: up to
                 * max_inflight entries each) */
                if (mine && msg_find(r, id->str, id->len)) continue;
                unsigned d = cnt->type == REDIS_REPLY_INTEGER ? (unsigned)cnt->integer : 1;
                if (d >= (unsigned)r->opts.max_deliveries) {
                    const char *av[4] = {"XACK", r->stream_key, GROUP, id->str};
                    size_t al[4] = {4, strlen(r->stream_key), strlen(GROUP), id->len};
                    if (redisAsyncCommandArgv(r->ac, on_count_reply, &r->st.stream_dead, 4, av,
                                              al) == REDIS_OK)
                        r->outstanding++;
                    continue;
                }
                memcpy(c->e[c->n].id, id->str, id->len);
                c->e[c->n].id[id->len] = '\0';
                c->e[c->n].deliveries = d;
                argv[na++] = c->e[c->n].id;
                c->n++;
            }
            for (int i = 0; i < na; i++) lens[i] = strlen(argv[i]);
            if (c->n > 0 &&
                redisAsyncCommandArgv(r->ac, on_xclaim_reply, c, na, argv, lens) == REDIS_OK) {
                r->outstanding++;
                c = NULL; /* the callback frees it */
            }
        }
        free(c);
        free(argv);
        free(lens);
    }
    round_part_done(r);
}

/* Acknowledged entries stay in a stream until someone deletes them: without
 * this, PREFIX:feedback would grow by every event ever written (some 50
 * bytes each), for good. This deletes the entries before the oldest one any
 * consumer group of the stream still needs: its oldest pending entry, or
 * after its last-delivered one. Every group counts, so another application's
 * group on the same stream loses nothing it has not read; a plain XREAD or
 * XRANGE reader sees only what is newer. Stream ids are compared as decimal
 * strings (length, then text): Lua's numbers are doubles. Needs XTRIM MINID
 * (Redis >= 6.2, as XPENDING IDLE does). Returns the entries deleted. */
static const char TRIM_SCRIPT[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "local function less(a, b)\n"
    "  if #a ~= #b then return #a < #b end\n"
    "  return a < b\n"
    "end\n"
    "local function older(a, b)\n"
    "  local am, as = string.match(a, '^(%d+)-(%d+)$')\n"
    "  local bm, bs = string.match(b, '^(%d+)-(%d+)$')\n"
    "  if am ~= bm then return less(am, bm) end\n"
    "  return less(as, bs)\n"
    "end\n"
    "local keep = nil\n"
    "for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do\n"
    "  local f = {}\n"
    "  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end\n"
    "  local need = f['last-delivered-id']\n"
    "  if f['pending'] > 0 then need = redis.call('XPENDING', KEYS[1], f['name'])[2] end\n"
    "  if keep == nil or older(need, keep) then keep = need end\n"
    "end\n"
    "if keep == nil then return 0 end\n"
    "return redis.call('XTRIM', KEYS[1], 'MINID', keep)\n";

/* One XACK names up to ACK_BATCH entries: a round after a full burst of
 * reads acknowledges thousands, one command per entry would be thousands of
 * commands. */
#define ACK_BATCH 500

typedef struct {
    size_t n;
    store_msg_t *m[];
} ack_batch_t;

static void on_xack_reply(redisAsyncContext *ac, void *reply_, void *priv)
{
    store_redis_t *r = ac->data;
    redisReply *reply = reply_;
    ack_batch_t *b = priv;
    r->outstanding--;
    int ok = reply != NULL && reply->type == REDIS_REPLY_INTEGER;
    if (ok) r->st.stream_acked += (uint64_t)reply->integer;
    for (size_t i = 0; i < b->n; i++) {
        if (ok) {
            msg_unlink(r, b->m[i]);
            free(b->m[i]);
        } else {
            b->m[i]->state = MSG_ACK_QUEUED; /* resent next round */
            r->n_ack_queued++;
        }
    }
    free(b);
    /* A refused XACK (an ACL, say) is retried at the tick, not in rounds
     * back to back. */
    if (!ok) r->stream_behind = 0;
    if (ok && r->stream_behind) read_stream(r); /* room was freed */
    round_part_done(r);
}

/* XACK for up to ACK_BATCH of the entries waiting for one, from *from on;
 * *from ends after the last one taken. 0 when none was sent (none waits,
 * or no memory: they go next round). */
static int send_acks(store_redis_t *r, store_msg_t **from)
{
    size_t want = r->n_ack_queued < ACK_BATCH ? r->n_ack_queued : ACK_BATCH;
    if (want == 0) return 0;
    ack_batch_t *b = malloc(sizeof(*b) + want * sizeof(b->m[0]));
    const char **argv = malloc((3 + want) * sizeof(*argv));
    size_t *lens = malloc((3 + want) * sizeof(*lens));
    int sent = 0;
    if (b && argv && lens) {
        argv[0] = "XACK";
        argv[1] = r->stream_key;
        argv[2] = GROUP;
        b->n = 0;
        store_msg_t *m = *from;
        for (; m && b->n < want; m = m->next)
            if (m->state == MSG_ACK_QUEUED) b->m[b->n++] = m;
        *from = m;
        for (size_t i = 0; i < b->n; i++) argv[3 + i] = b->m[i]->id;
        for (size_t i = 0; i < 3 + b->n; i++) lens[i] = strlen(argv[i]);
        if (b->n > 0 && redisAsyncCommandArgv(r->ac, on_xack_reply, b, (int)(3 + b->n), argv,
                                              lens) == REDIS_OK) {
            for (size_t i = 0; i < b->n; i++) b->m[i]->state = MSG_ACK_SENT;
            r->n_ack_queued -= b->n;
            r->outstanding++;
            b = NULL; /* the callback frees it */
            sent = 1;
        }
    }
    free(b);
    free(argv);
    free(lens);
    return sent;
}

/* How many entries the next read or claim may ask for: a page (count), or
 * less when max_inflight is near. */
static size_t page_room(const store_redis_t *r)
{
    size_t max = (size_t)r->opts.max_inflight;
    size_t room = r->n_msgs < max ? max - r->n_msgs : 0;
    return room < (size_t)r->opts.count ? room : (size_t)r->opts.count;
}

/* One page of new entries, unless one is on its way or there is no room. */
static void read_stream(store_redis_t *r)
{
    size_t count = page_room(r);
    if (r->stream_cb == NULL || r->shutting_down || !can_send(r) || r->xread_inflight || count == 0)
        return;
    if (redisAsyncCommand(r->ac, on_xread_reply, (void *)(uintptr_t)count,
                          "XREADGROUP GROUP " GROUP " %s COUNT %d STREAMS %s >", r->consumer,
                          (int)count, r->stream_key) != REDIS_OK)
        return;
    r->outstanding++;
    r->xread_inflight = 1;
}

static void send_stream(store_redis_t *r)
{
    const char *key = r->stream_key;
    store_msg_t *from = r->msgs;
    while (send_acks(r, &from)) continue;
    if (r->stream_cb == NULL || r->shutting_down) return;
    if (!r->group_ok && redisAsyncCommand(r->ac, on_group_reply, NULL,
                                          "XGROUP CREATE %s " GROUP " 0 MKSTREAM", key) == REDIS_OK)
        r->outstanding++;
    size_t count = page_room(r);
    if (count == 0) return; /* no room: no claims either */
    read_stream(r);
    uint64_t now = mm_now_ms();
    uint64_t every = (uint64_t)r->opts.claim_idle_ms / 2;
    int next_page = r->claim_from[0] != '\0';
    int new_pass = !next_page && now - r->last_claim_ms >= every;
    if (new_pass) {
        r->last_claim_ms = now;
        if (redisAsyncCommand(r->ac, on_count_reply, &r->st.stream_trimmed, "EVAL %s 1 %s",
                              TRIM_SCRIPT, key) == REDIS_OK)
            r->outstanding++;
    }
    if ((next_page || new_pass) &&
        redisAsyncCommand(r->ac, on_xpending_reply, (void *)(uintptr_t)count,
                          "XPENDING %s " GROUP " IDLE %d %s + %d", key, r->opts.claim_idle_ms,
                          next_page ? r->claim_from : "-", (int)count) == REDIS_OK)
        r->outstanding++;
}

int store_redis_subscribe(store_redis_t *r, store_stream_cb cb, void *arg,
                          const store_stream_opts_t *opts)
{
    if (r->stream_cb != NULL || cb == NULL) return -1;
    store_stream_opts_t o = {100, 30000, 10, 10000};
    if (opts) {
        if (opts->count > 0) o.count = opts->count;
        if (opts->claim_idle_ms > 0) o.claim_idle_ms = opts->claim_idle_ms;
        if (opts->max_deliveries > 0) o.max_deliveries = opts->max_deliveries;
        if (opts->max_inflight > 0) o.max_inflight = opts->max_inflight;
    }
    r->opts = o;
    r->stream_cb = cb;
    r->stream_arg = arg;
    r->group_ok = 0;
    r->last_claim_ms = 0;
    r->claim_from[0] = '\0';
    return 0;
}

void store_redis_msg_done(store_redis_t *r, store_msg_t *m, int ack)
{
    if (m->state != MSG_DELIVERED) return;
    if (ack) {
        m->state = MSG_ACK_QUEUED; /* XACK in the next round */
        r->n_ack_queued++;
        return;
    }
    msg_unlink(r, m);
    free(m);
}

const char *store_msg_id(const store_msg_t *m)
{
    return m->id;
}

const char *store_msg_field(const store_msg_t *m, const char *name)
{
    for (size_t i = 0; i < m->n_fields; i++)
        if (strcmp(m->names[i], name) == 0) return m->values[i];
    return NULL;
}

size_t store_msg_field_count(const store_msg_t *m, const char *name)
{
    size_t k = 0;
    for (size_t i = 0; i < m->n_fields; i++) k += strcmp(m->names[i], name) == 0;
    return k;
}

int store_msg_has_nul(const store_msg_t *m)
{
    return m->has_nul;
}

unsigned store_msg_deliveries(const store_msg_t *m)
{
    return m->deliveries;
}

/* ---- rounds ---- */

static void start_round(store_redis_t *r)
{
    if (!can_send(r) || r->round_active) return;
    store_t *s = r->s;
    r->round_active = 1;
    r->rounds_started++;
    r->outstanding = 0;
    r->round_started_ms = mm_now_ms();
    r->round_req_sent = 0;
    for (size_t i = 0; i < s->n_exps; i++) send_exp(r, s->exps[i]);
    send_reqs(r);
    send_aux(r);
    send_stream(r);
    if (r->outstanding == 0) {
        r->round_active = 0;
        r->rounds_done = r->rounds_started;
        run_flushes(r);
    }
}

/* Call the waiters whose round is done, and all of them when no round can
 * be sent (Redis down, shutting down): a flush never waits for a reconnect,
 * as routing does not. A Redis that hangs with its socket open is dropped
 * only after ROUND_TIMEOUT_MS, so, as for GETs, a waiter is called after
 * FLUSH_TIMEOUT_MS anyway, and every new one at once until a round completes
 * again. Waiters left get a round now rather than at the next tick. A
 * callback may add a waiter, so the list is detached first. */
static void run_flushes(store_redis_t *r)
{
    uint64_t now = mm_now_ms();
    int give_up =
        !can_send(r) || r->shutting_down || r->closing || r->destroying || r->flush_stalled;
    flush_t *due = NULL, **pp = &r->flushes;
    while (*pp) {
        flush_t *f = *pp;
        if (f->deadline_ms <= now) r->flush_stalled = 1;
        if (give_up || r->rounds_done >= f->after || f->deadline_ms <= now) {
            *pp = f->next;
            f->next = due;
            due = f;
        } else {
            pp = &f->next;
        }
    }
    if (r->flushes && !r->round_active) start_round(r);
    while (due) {
        flush_t *f = due;
        due = f->next;
        f->cb(f->arg);
        free(f);
    }
}

void store_redis_flush(store_redis_t *r, void (*cb)(void *), void *arg)
{
    flush_t *f = malloc(sizeof(*f));
    if (f == NULL) {
        cb(arg); /* no memory to wait: answer with what is known */
        return;
    }
    f->after = r->rounds_started + 1; /* the next round to start, not one in flight */
    f->deadline_ms = mm_now_ms() + FLUSH_TIMEOUT_MS;
    f->cb = cb;
    f->arg = arg;
    f->next = r->flushes;
    r->flushes = f;
    run_flushes(r);
}

static void on_sync_timer(uv_timer_t *t)
{
    store_redis_t *r = container_of(t, store_redis_t, sync_timer);
    store_req_prune(r->s, PRUNE_PER_ROUND);
    store_aux_prune(r->s, PRUNE_PER_ROUND);
    expire_gets(r);
    if (r->flushes) run_flushes(r);
    if (r->round_active) {
        if (mm_now_ms() - r->round_started_ms > ROUND_TIMEOUT_MS)
            force_close(r, "no reply for 5 s");
        return;
    }
    start_round(r);
}

/* ---- shutdown and destruction ---- */

static int unflushed(const store_redis_t *r)
{
    const store_t *s = r->s;
    for (size_t i = 0; i < s->n_exps; i++) {
        const store_exp_t *x = s->exps[i];
        if (x->batch.active || x->reset_pending || x->pub.control_dirty || x->ctl_init) return 1;
        for (size_t a = 0; a < x->pub.n_arms; a++)
            if (store_stats_nonzero(&x->pub.pending[a]) || x->pub.answers_local[a].answers)
                return 1;
        if (x->tally_clear_pending || tally_nonzero_local(x->pub.tally)) return 1;
    }
    return r->rq_len > 0 || r->aq.n > 0 || r->n_ack_queued > 0;
}

static void finish(store_redis_t *r)
{
    r->closing = 1;
    uv_timer_stop(&r->conn_timer);
    if (r->ac != NULL && (r->ac->c.flags & REDIS_CONNECTED)) {
        redisAsyncDisconnect(r->ac); /* after outstanding lookups; on_disconnect closes */
        return;
    }
    force_close(r, "shutdown"); /* still connecting: never inside a callback */
    close_timers(r);
}

static void maybe_finish(store_redis_t *r)
{
    if (!r->shutting_down || r->closing || r->destroying) return;
    if (r->ac && (r->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING))) return;
    if (r->round_active) return;
    if (unflushed(r) && !r->deadline_passed) {
        start_round(r); /* when connected; else wait for a reconnect or the deadline */
        return;
    }
    finish(r);
}

static void on_deadline(uv_timer_t *t)
{
    store_redis_t *r = container_of(t, store_redis_t, deadline_timer);
    r->deadline_passed = 1;
    if (unflushed(r)) note(r, "shutdown: gave up writing what is pending");
    r->closing = 1;
    uv_timer_stop(&r->conn_timer);
    force_close(r, "shutdown timeout");
    close_timers(r);
}

void store_redis_shutdown(store_redis_t *r, int timeout_ms, void (*done)(void *), void *arg)
{
    if (r->shutting_down) return;
    r->shutting_down = 1;
    r->done = done;
    r->done_arg = arg;
    uv_timer_stop(&r->sync_timer);
    uv_timer_start(&r->deadline_timer, on_deadline, timeout_ms > 0 ? (uint64_t)timeout_ms : 0, 0);
    run_flushes(r); /* shutting down: nobody waits for a round any more */
    maybe_finish(r);
}

void store_redis_destroy(store_redis_t *r)
{
    r->destroying = 1;
    r->done = NULL;
    while (r->flushes) { /* too late to call back: their owners are gone too */
        flush_t *f = r->flushes;
        r->flushes = f->next;
        free(f);
    }
    force_close(r, "destroyed"); /* pending lookups are answered "not found" */
    while (r->msgs) {
        store_msg_t *m = r->msgs;
        msg_unlink(r, m);
        free(m);
    }
    if (r->open_handles > 0) {
        close_timers(r); /* the last close callback frees everything */
        return;
    }
    store_t *s = r->s;
    free(r->rq);
    aq_free(&r->aq);
    aq_free(&r->aq_sent);
    free(r);
    store_free_final(s);
}

/* ---- the rest of the interface ---- */

static void sanitize(char *p)
{
    for (; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              *p == '.' || *p == '_' || *p == '-'))
            *p = '_';
}

store_redis_t *store_redis_create(store_t *s, char *err, size_t errlen)
{
    const cfg_store_t *c = &s->cfg;
    if ((c->n_sentinels == 0 && (c->host[0] == '\0' || c->port <= 0 || c->port > 65535)) ||
        c->sync_ms <= 0) {
        snprintf(err, errlen, "store: redis needs a host, a port in 1..65535 and sync_ms > 0");
        return NULL;
    }
    store_redis_t *r = calloc(1, sizeof(*r));
    if (r == NULL ||
        (c->n_sentinels && (r->sentinel = sentinel_new(s->loop, c, CONNECT_TIMEOUT_MS)) == NULL)) {
        free(r);
        snprintf(err, errlen, "store: out of memory");
        return NULL;
    }
    r->s = s;
    if (c->n_sentinels == 0) {
        snprintf(r->at_host, sizeof(r->at_host), "%s", c->host);
        r->at_port = c->port;
    }
    r->backoff_ms = BACKOFF_MIN_MS;
    r->rq_max = STORE_REQ_QUEUE_DEFAULT;

    char host[65] = "localhost";
    if (gethostname(host, sizeof(host) - 1) != 0) snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    sanitize(host);
    uint32_t nonce;
    if (uv_random(NULL, NULL, &nonce, sizeof(nonce), 0, NULL) != 0)
        nonce = (uint32_t)(mm_now_us() ^ (uintptr_t)r);
    snprintf(r->consumer, sizeof(r->consumer), "%s-%ld", host, (long)getpid());
    snprintf(r->instance, sizeof(r->instance), "%s-%08" PRIx32, r->consumer, nonce);
    key_of(r->stream_key, r, "", "feedback");

    uv_timer_init(s->loop, &r->sync_timer);
    uv_timer_init(s->loop, &r->conn_timer);
    uv_timer_init(s->loop, &r->deadline_timer);
    r->sync_timer.data = r->conn_timer.data = r->deadline_timer.data = r;
    r->open_handles = 3 + (r->sentinel != NULL);
    uv_timer_start(&r->sync_timer, on_sync_timer, (uint64_t)c->sync_ms, (uint64_t)c->sync_ms);
    redis_connect(r); /* failing is fine: routing goes on, we retry */
    return r;
}

/* The keys an experiment's sync script names (the others are made as sent). */
static void exp_keys(store_redis_t *r, store_exp_t *x)
{
    char mid[MM_NAME_MAX + 16];
    snprintf(mid, sizeof(mid), "{%s}:", x->pub.name);
    key_of(x->ctl_key, r, mid, "control");
    snprintf(mid, sizeof(mid), "{%s}:seq:", x->pub.name);
    key_of(x->seq_key, r, mid, r->instance);
}

void store_redis_exp_added(store_redis_t *r, store_exp_t *x, int redefined)
{
    exp_keys(r, x);
    /* Redefined by the config: ours wins. Else adopt what Redis has, if any. */
    if (redefined) /* a new x: ctl_known_valid is 0, every field is written */
        x->pub.control_dirty++;
    else
        x->ctl_init = 1;
}

static int same_sentinels(const cfg_store_t *a, const cfg_store_t *b)
{
    if (a->n_sentinels != b->n_sentinels || strcmp(a->sentinel_master, b->sentinel_master) != 0 ||
        strcmp(a->sentinel_username, b->sentinel_username) != 0 ||
        strcmp(a->sentinel_password, b->sentinel_password) != 0)
        return 0;
    for (int i = 0; i < a->n_sentinels; i++)
        if (strcmp(a->sentinels[i].host, b->sentinels[i].host) != 0 ||
            a->sentinels[i].port != b->sentinels[i].port)
            return 0;
    return 1;
}

/* Whether a and b name the same Redis, database and keys, as the same user. */
static int same_place(const cfg_store_t *a, const cfg_store_t *b)
{
    return same_sentinels(a, b) &&
           (a->n_sentinels > 0 || (strcmp(a->host, b->host) == 0 && a->port == b->port)) &&
           strcmp(a->prefix, b->prefix) == 0 && strcmp(a->username, b->username) == 0 &&
           strcmp(a->password, b->password) == 0 && a->db == b->db;
}

/* "HOST:PORT" or "NAME (Sentinel)", then the database and prefix. */
static void place_str(const cfg_store_t *c, char *out, size_t cap)
{
    if (c->n_sentinels > 0)
        snprintf(out, cap, "%s (Sentinel), db %d, prefix %s", c->sentinel_master, c->db, c->prefix);
    else
        snprintf(out, cap, "%s:%d, db %d, prefix %s", c->host, c->port, c->db, c->prefix);
}

/* A reload's settings. The store moves as it does when Redis restarts
 * empty or fails over, so nothing new is needed to keep what was learned:
 * the connection is dropped (the writes in flight fail, and are kept and
 * sent again), made again with the new settings, and the first sync
 * script per experiment finds the new place empty and writes this
 * instance's snapshot there (restore), or finds state there and adopts it
 * (its reset epoch taken as the place's own, not as a reset). */
void store_redis_reconfigure(store_redis_t *r, const cfg_store_t *cfg)
{
    cfg_store_t *c = &r->s->cfg;
    if (r->closing || r->destroying || r->shutting_down) return;
    if (c->sync_ms != cfg->sync_ms) {
        c->sync_ms = cfg->sync_ms;
        uv_timer_start(&r->sync_timer, on_sync_timer, (uint64_t)c->sync_ms, (uint64_t)c->sync_ms);
    }
    if (same_place(c, cfg)) return;
    int new_sentinels = !same_sentinels(c, cfg);
    sentinel_t *fresh = NULL;
    if (new_sentinels && cfg->n_sentinels > 0 &&
        (fresh = sentinel_new(r->s->loop, c, CONNECT_TIMEOUT_MS)) == NULL) {
        note(r, "reload: out of memory for the new Sentinels; the store stays where it is");
        return;
    }
    char to[512];
    place_str(cfg, to, sizeof(to));
    note(r, "reload: moving to %s", to);
    r->up = 0;
    r->down_logged = 1; /* that line says it: no "down" line for the close */
    force_close(r, "reload");
    r->backoff_ms = BACKOFF_MIN_MS;
    int new_prefix = strcmp(c->prefix, cfg->prefix) != 0;
    *c = *cfg;
    if (new_sentinels) {
        if (r->sentinel)
            sentinel_close(r->sentinel, on_sentinel_closed, r); /* drops its question */
        r->sentinel = fresh;
        r->asking = 0;
        if (fresh) r->open_handles++;
    }
    if (c->n_sentinels == 0) {
        snprintf(r->at_host, sizeof(r->at_host), "%s", c->host);
        r->at_port = c->port;
    } else if (new_sentinels) {
        r->at_host[0] = '\0';
        r->at_port = 0;
    }
    if (new_prefix) {
        key_of(r->stream_key, r, "", "feedback");
        r->claim_from[0] = '\0';
        for (size_t i = 0; i < r->s->n_exps; i++) exp_keys(r, r->s->exps[i]);
    }
    for (size_t i = 0; i < r->s->n_exps; i++) r->s->exps[i]->rebase = 1;
    r->readonly = 0;
    r->refusal[0] = '\0';
    r->down_logged = 0; /* the new place's failures are logged */
    r->announce_up = 1; /* and so is its first "up" */
    if (r->resolving)
        r->stale = 1; /* its answer connects again */
    else if (!r->asking)
        uv_timer_start(&r->conn_timer, on_conn_timer, 0, 0);
}

int store_redis_from_memory(store_t *s, const cfg_store_t *cfg)
{
    char to[512], err[256];
    place_str(cfg, to, sizeof(to));
    mm_log("store: reload: moving from memory to redis %s", to);
    cfg_store_t was = s->cfg;
    s->cfg = *cfg;
    store_redis_t *r = store_redis_create(s, err, sizeof(err));
    if (r == NULL) {
        s->cfg = was;
        mm_log("store: reload: %s; the store stays in memory", err);
        return -1;
    }
    r->announce_up = 1;
    /* What the memory store counted is the snapshot every round's script
     * carries: restored where Redis has nothing of the experiment, and
     * where it has, Redis's state is adopted as another instance's would be. */
    for (size_t i = 0; i < s->n_exps; i++) {
        store_exp_t *x = s->exps[i];
        memcpy(x->seen, x->pub.merged, sizeof(x->seen));
        tally_set_replicated(x->pub.tally, 1); /* what it counted is the snapshot */
        x->synced = 1;
        x->rebase = 1;
        /* Redis's control wins where it has one, as an instance joining
         * the fleet adopts it; the reload redefines experiments after
         * this (server.c), and those write the config's (DESIGN.md §5). */
        store_redis_exp_added(r, x, 0);
    }
    if (s->stream_cb) store_redis_subscribe(r, s->stream_cb, s->stream_arg, &s->stream_opts);
    s->redis = r;
    return 0;
}

int store_redis_at(const store_redis_t *r, const cfg_store_t *cfg)
{
    return same_place(&r->s->cfg, cfg);
}

int store_has_names(const cfg_store_t *c)
{
    return c->type == STORE_REDIS && (c->n_sentinels > 0 || !is_numeric(c->host));
}

int store_redis_up(const store_redis_t *r)
{
    return r->up;
}

int store_redis_writable(const store_redis_t *r)
{
    if (!r->up) return 0;
    for (size_t i = 0; i < r->s->n_exps; i++)
        if (r->s->exps[i]->refused) return 0;
    return 1;
}

void store_redis_stats(const store_redis_t *r, store_stats_t *out)
{
    out->req_queued = r->rq_len;
    out->req_dropped = r->st.req_dropped;
    out->syncs = r->st.syncs;
    out->sync_errors = r->st.sync_errors;
    out->reconnects = r->st.reconnects;
    out->stream_delivered = r->st.stream_delivered;
    out->stream_acked = r->st.stream_acked + r->st.stream_dead; /* a dead entry is acked too */
    out->stream_dead = r->st.stream_dead;
    out->stream_trimmed = r->st.stream_trimmed;
    out->aux_queued = r->aq.n + r->aq_sent.n;
    out->aux_dropped += r->st.aux_dropped;
}

void store_redis_debug_lose_replies(store_t *s, int n)
{
    if (s->redis) s->redis->lose_replies = n;
}
