"""Names shared by the API and the workers: tasks and queues (the API sends tasks by name),
and the pattern of model names."""

import re

GENERATE = "debm.generate"
SCORE = "debm.score"
TRAIN = "debm.train"

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"

TASK_FOR_KIND = {"generate": GENERATE, "score": SCORE, "train": TRAIN}
QUEUE_FOR_KIND = {"generate": INFERENCE_QUEUE, "score": INFERENCE_QUEUE,
                  "train": TRAINING_QUEUE}

# A model name: what POST /train registers a version of and what ``model=name[:version]`` picks.
MODEL_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"
MODEL_NAME_RE = re.compile(f"^{MODEL_NAME}$")
MODEL_NAME_PATTERN = f"^{MODEL_NAME}$"
MODEL_SPEC_PATTERN = f"^{MODEL_NAME}(:[1-9][0-9]{{0,8}})?$"  # name or name:version
