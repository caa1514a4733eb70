# Two images from one file (docker compose builds both):
#   --target api     `descent api` and `descent migrate`: every dependency but torch
#   --target worker  `descent worker` (and `descent serve`): with torch and its CUDA libraries;
#                    the default, so `docker build .` then `docker run` serves everything.
# Dependencies are installed before the source is copied: a code change rebuilds the last
# two layers, not PyTorch (~4 GB).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DESCENT_DATA_DIR=/data

# A user of its own, owning every folder the service writes: the data folder (the embedded
# default of `docker run`), the artifacts and the torch cache (compose mounts volumes there).
RUN useradd --create-home --uid 1000 descent \
    && mkdir -p /data /artifacts /torch-cache \
    && chown descent:descent /data /artifacts /torch-cache
WORKDIR /app

# The exact versions of requirements-api.lock (`make lock` makes it from requirements.lock:
# the runtime dependencies without torch and torchvision, every file's sha256 checked).
COPY requirements-api.lock requirements-worker.lock ./
RUN pip install -r requirements-api.lock


FROM base AS api
COPY . .
RUN pip install --no-deps -e ./client -e .
USER descent
EXPOSE 8000
CMD ["descent", "api", "--host", "0.0.0.0", "--port", "8000"]


FROM base AS worker
# The same versions, and torch and torchvision with what they need (requirements-worker.lock).
RUN pip install -r requirements-worker.lock
COPY . .
RUN pip install --no-deps -e ./client -e .
USER descent
EXPOSE 8000
CMD ["descent", "serve", "--host", "0.0.0.0", "--port", "8000"]
