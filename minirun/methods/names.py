"""The methods by name, apart from their code: the command line lists and checks them without importing torch,
so `minirun --help` and `report` start in a fraction of the time a model-running command needs."""

# next-token score fusion (`fusion.RULES`)
RULE_NAMES = ("avg", "avg_logprob", "avg_prob", "max", "weighted_avg", "weighted_max")
METHODS = ("origin", "per_prompt", "vote", *RULE_NAMES, "hidden_avg", "flex")
EVERY_ANSWER = ("per_prompt", "vote")  # every prompt answered on its own, each answer kept in the result
# An option's log-likelihood per token ("mean"), summed ("sum": lm-evaluation-harness's acc), or per character of
# the option's text ("chars": the harness's acc_norm)
CHOICE_SCORES = ("mean", "sum", "chars")
WEIGHTED = ("weighted_avg", "weighted_max")  # the rules that weight each prompt by the model's confidence in it
OPTION_READERS = {  # the EnsembleOptions fields only some methods read, and which
    "positions": ("flex",), "flex_bias": ("flex",), "fusion_layer": ("hidden_avg",), "fusion_alpha": ("hidden_avg",),
    "num_samples": WEIGHTED,
}
