"""Python client of the Denoising-EBM service (needs only Pillow and httpx: ``pip install
'debm[client]'``).

    from debm.client import Client, DebmError

    with Client("http://127.0.0.1:8000", api_key) as api:
        out = api.generate(n=16, seed=1)                 # Generated: PIL images and grid
        scores = api.score(["examples/digit-7.png"])     # Scores: score, percentile, is_ood
        job = api.train("mnist5k", preset="tiny", name="mine")
        for event in api.events(job.job_id):             # live progress (Server-Sent Events)
            print(event.event, event.data.get("step"))

``AsyncClient`` has the same methods as coroutines.  Every failure raises ``DebmError`` with
the server's ``status`` and ``message``.
"""

from .aio import AsyncClient
from .sync import Client
from .types import (Dataset, DebmError, Event, Generated, Job, Model, Models, ModelVersion,
                    Score, Scores, Trained)

__all__ = ["AsyncClient", "Client", "Dataset", "DebmError", "Event", "Generated", "Job",
           "Model", "ModelVersion", "Models", "Score", "Scores", "Trained"]
