# MMBC engine image.
#   docker build -t mmbc .
#   docker run --env-file .env --network host -v mmbc-data:/data --restart unless-stopped mmbc
# Settings come from the environment (see .env.example and docs/configuration.md); a TOML file
# can be mounted and named with MMBC_CONFIG or passed as arguments: `mmbc ... --config /x.toml`.
# --network host lets the engine reach the meter and the batteries on the LAN directly.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the mmbc wheel plus wheels of all its dependencies ---------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY sim ./sim
# Prebuilt wheels exist for amd64 and arm64. Where one is missing (32-bit ARM, e.g. an older
# Raspberry Pi OS) install a compiler and build it; the compiler never reaches the final image.
RUN pip wheel --wheel-dir /wheels . \
    || (apt-get update \
        && apt-get install -y --no-install-recommends build-essential \
        && rm -rf /var/lib/apt/lists/* \
        && pip wheel --wheel-dir /wheels .)

# ---- runtime: the installed wheels only, run as an unprivileged user -----------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 mmbc \
    && useradd --system --uid 10001 --gid mmbc --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin mmbc
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-index --find-links=/tmp/wheels mmbc \
    && rm -rf /tmp/wheels
# The working directory is where a mounted .env is found: -v "$PWD/.env:/app/.env:ro".
WORKDIR /app
# The energy totals' state file lives in /data (-v mmbc-data:/data keeps it across updates).
RUN mkdir -p /data && chown mmbc:mmbc /data
VOLUME ["/data"]
USER mmbc
# Healthy while control cycles complete and the meter is fresh (GET /healthz, 503 otherwise).
# HTTP_PORT from the environment; with the server off (HTTP_ENABLED=false or HTTP_PORT=0) or
# its settings only in .env or a TOML file, there is nothing to ask and the check passes.
EXPOSE 8099
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, sys, urllib.request; \
port = os.environ.get('HTTP_PORT', '8099'); \
off = os.environ.get('HTTP_ENABLED', 'true').lower() == 'false' or port == '0'; \
host = os.environ.get('HTTP_HOST') or '127.0.0.1'; \
off or urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=4); \
sys.exit(0)"
ENTRYPOINT ["mmbc-engine"]
