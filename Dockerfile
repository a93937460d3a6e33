# Introloop worker image. Build: docker build -t introloop .
# Run:   docker run --env-file .env -v introloop-data:/data introloop
# The image holds no secrets: they come from the environment (or --env-file) at run time.
ARG PYTHON_IMAGE=python:3.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
COPY templates ./templates
COPY config ./config
# constraints.txt pins every dependency to the versions CI tested
RUN python -m venv /opt/introloop \
    && /opt/introloop/bin/pip install --no-cache-dir -c constraints.txt .

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 introloop \
    && useradd --system --uid 10001 --gid introloop --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin introloop \
    && mkdir -p /data \
    && chown introloop:introloop /data
COPY --from=build /opt/introloop /opt/introloop
ENV PATH=/opt/introloop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INTROLOOP_DATA_DIR=/data
# SQLite database (and its -wal/-shm files) live here: a local volume, never a network share
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
# healthy = the worker read the mailbox and flushed the outbox recently (see `introloop health`)
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
    CMD ["introloop", "--env-file", "/dev/null", "health"]
# exec form, so SIGTERM reaches Python and the worker stops cleanly
CMD ["introloop", "--env-file", "/dev/null", "run"]
