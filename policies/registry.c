/* registry.c — the list of routing policies the config may name.
 *
 * Adding a policy is one line here plus its own file in policies/. */
#include <string.h>

#include "policy.h"

/* One extern per policy file (each defines exactly this one public symbol). */
extern const policy_ops_t policy_thompson_ops;
extern const policy_ops_t policy_epsilon_greedy_ops;
extern const policy_ops_t policy_ucb1_ops;
extern const policy_ops_t policy_shadow_ops;
extern const policy_ops_t policy_canary_ops;
extern const policy_ops_t policy_ab_ops;
extern const policy_ops_t policy_interleave_ops;

static const policy_ops_t *const registry[] = {
    &policy_thompson_ops,   &policy_epsilon_greedy_ops,
    &policy_ucb1_ops,       &policy_shadow_ops,
    &policy_canary_ops,     &policy_ab_ops,
    &policy_interleave_ops, NULL, /* end */
};

const policy_ops_t *policy_find(const char *name)
{
    for (size_t i = 0; registry[i] != NULL; i++)
        if (strcmp(registry[i]->name, name) == 0) return registry[i];
    return NULL;
}
