"""Per-method training-step cost of a detector at a real image size (``python -m bench.profile``).

What a user with a GPU asks before a sweep: for my model, at my image size and precision, what does
one training step of each method cost in time and memory? :mod:`bench.profile.__main__` runs each
method in a fresh process (:mod:`bench.profile.step`), so no method inherits another's allocations,
and prints the table with ratios to full fine-tuning; ``--out`` keeps it as JSON.
"""
