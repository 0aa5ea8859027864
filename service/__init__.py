"""The FastAPI service and the state it shares with the workers.

Modules the workers import too (settings, jobs, registry, datadir, trainconfig) import neither
fastapi nor torch; the FastAPI parts (app, deps, routers, schemas, uploads) never import torch.
"""
