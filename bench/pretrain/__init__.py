"""Pre-training glip-nano on the shapes world's grounding corpus (``python -m bench.pretrain``).

Tuning methods can only be compared on a detector that already knows something: a frozen random
network gives every method the same nothing to adapt. ``corpus`` names the pre-training data,
``loop`` trains on it, ``card`` measures the result (zero-shot AP on the downstream suite) and
writes it down next to the weights.
"""
