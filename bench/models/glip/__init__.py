"""GLIP in pure PyTorch, loading the official checkpoints and matching the official code numerically.

Module names follow the official state dict (``backbone.body``, ``backbone.fpn``,
``language_backbone.body.model``, ``rpn.head.dyhead_tower``...), so an official checkpoint loads by
exact name once its ``module.`` prefix is stripped.
"""
