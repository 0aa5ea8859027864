"""The FastAPI service: the app factory and its error table, request and response schemas,
authentication, uploads, dispatch and one router per resource.

It never imports torch or worker/; the state it shares with the workers (settings, jobs,
registry, data directory, training-request checks) lives in core/.
"""
