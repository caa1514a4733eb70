"""The HTTP API: FastAPI routes, wire schemas and services over the store.

Nothing here imports torch: jobs are sent to the workers by task name.
"""
