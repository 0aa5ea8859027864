"""Task and queue names shared by the API (which sends tasks by name) and the workers."""

GENERATE = "debm.generate"
SCORE = "debm.score"
TRAIN = "debm.train"

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"

TASK_FOR_KIND = {"generate": GENERATE, "score": SCORE, "train": TRAIN}
QUEUE_FOR_KIND = {"generate": INFERENCE_QUEUE, "score": INFERENCE_QUEUE,
                  "train": TRAINING_QUEUE}

# Mirrors model.samplers.SAMPLERS and model.data.BUILTIN_DATASETS, which live in modules that
# import torch; the API validates requests against these and the worker re-checks against
# model/'s own registries (tests/worker/test_names.py keeps them equal).
SAMPLERS = ("two_stage", "texture_only", "annealed")
BUILTIN_DATASETS = ("mnist5k", "digits8x8")
