# One image for every production process: `descent migrate`, `descent api`, `descent worker`.
# The PyPI torch wheels carry CUDA, so GPU workers run this image too (with the NVIDIA runtime).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
# The same install as `make install`, without the test extras.
RUN pip install -e .

# Run as a user of its own; /artifacts is where the shared artifact volume is mounted.
RUN useradd --create-home --uid 1000 descent \
    && mkdir -p /artifacts /torch-cache \
    && chown descent /artifacts /torch-cache
USER descent

EXPOSE 8000
CMD ["descent", "api", "--host", "0.0.0.0", "--port", "8000"]
