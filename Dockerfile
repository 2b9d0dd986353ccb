# Hypercord on a CUDA GPU. Build:  docker build -t hypercord .
# Run:    docker compose up -d     (see docker-compose.yml and docs/owner-guide.md)
ARG BASE_IMAGE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/hypercord/.cache/huggingface \
    HYPERCORD_STORAGE__DATABASE=/app/data/hypercord.sqlite3 \
    HYPERCORD_STORAGE__IMAGES_DIR=/app/data/images \
    HYPERCORD_MODELS__HYPERNETWORK_DIR=/app/models/hypernetworks \
    HYPERCORD_MODELS__STORE_DIR=/app/models/store

WORKDIR /app

# Dependencies first (cached layer); torch comes from the base image and satisfies torch>=2.10.
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
COPY engine ./engine
RUN python -m pip install --no-cache-dir . \
    && groupadd --gid 10001 hypercord && useradd --create-home --uid 10001 --gid 10001 hypercord \
    && mkdir -p /app/data /app/models/hypernetworks /app/models/store /home/hypercord/.cache/huggingface \
    && chown -R hypercord:hypercord /app/data /app/models /home/hypercord

COPY config.example.toml ./

USER 10001:10001
VOLUME ["/app/data", "/app/models", "/home/hypercord/.cache/huggingface"]

# The bot rewrites data/health.json every few seconds while connected; stale or missing → unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
    CMD ["python", "-m", "bot", "--healthcheck"]

# The token comes from DISCORD_TOKEN or a Docker secret file (DISCORD_TOKEN_FILE=/run/secrets/discord_token).
ENTRYPOINT ["python", "-m", "bot"]
