"""Detection data: COCO-format files, GLIP prompts and positive maps, few-shot splits, transforms,
and the synthetic shapes world."""
