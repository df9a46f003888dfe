"""Data: synthetic spurious-cue benchmark, real dataset loaders, counterfactual-triple collator."""
