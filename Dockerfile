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

# pyproject.toml's dependencies and the client's (client/pyproject.toml), but torch and
# torchvision (only the worker has them) and the client itself (installed from ./client).
COPY pyproject.toml .
COPY client/pyproject.toml client/
RUN python -c "import tomllib; deps = [d for f in ('pyproject.toml', 'client/pyproject.toml') for d in tomllib.load(open(f, 'rb'))['project']['dependencies']]; print('\n'.join(d for d in deps if not d.startswith(('torch', 'descent-client'))))" > requirements.txt \
    && pip install -r requirements.txt


FROM base AS api
COPY . .
RUN pip install --no-deps -e ./client -e .
USER descent
EXPOSE 8000
CMD ["descent", "api", "--host", "0.0.0.0", "--port", "8000"]


FROM base AS worker
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if d.startswith('torch')))" > requirements-torch.txt \
    && pip install -r requirements-torch.txt
COPY . .
RUN pip install --no-deps -e ./client -e .
USER descent
EXPOSE 8000
CMD ["descent", "serve", "--host", "0.0.0.0", "--port", "8000"]
