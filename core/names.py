"""Task and queue names shared by the API (which sends tasks by name) and the workers."""

GENERATE = "debm.generate"
SCORE = "debm.score"
TRAIN = "debm.train"

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"

TASK_FOR_KIND = {"generate": GENERATE, "score": SCORE, "train": TRAIN}
QUEUE_FOR_KIND = {"generate": INFERENCE_QUEUE, "score": INFERENCE_QUEUE,
                  "train": TRAINING_QUEUE}
