# syntax=docker/dockerfile:1
# sigv4-proxy as a sidecar container: `docker build -t sigv4-proxy .`, then see docker-compose.yml.
# scripts/check-container repeats these install steps outside Docker in CI and lints this file.

# Pinned by version: a new base is a deliberate change. The minor version is the one CI tests.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# Stage 1: wheels for the package and every dependency, built from only the files the package
# needs (see .dockerignore). Every dependency ships manylinux wheels, so no compiler is needed.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m pip wheel --wheel-dir /wheels .

# Stage 2: the runtime. The wheels are bind-mounted for the install, so neither they nor the
# source tree nor a pip cache end up in a layer; no build tools, no credentials, not root.
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels /wheels/sigv4_proxy-*.whl \
    && groupadd --system --gid 10001 sigv4-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /home/sigv4-proxy \
        --shell /usr/sbin/nologin sigv4-proxy \
    && install --directory --mode=0755 --owner=10001 --group=10001 /home/sigv4-proxy

# Listening beyond loopback is an explicit choice (the proxy signs with the AWS identity it is
# given): inside a container, other containers and the published port need it. HOME is set so
# botocore finds a mounted ~/.aws whatever user id the container runs as.
ENV HOME=/home/sigv4-proxy \
    SIGV4_PROXY_LISTEN=0.0.0.0:8080 \
    SIGV4_PROXY_ALLOW_REMOTE=true
WORKDIR /home/sigv4-proxy
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "proxy.healthcheck"]
# docker stop sends SIGTERM: the proxy drains in-flight requests for --shutdown-grace (10 s), so
# give `docker stop -t` / stop_grace_period / terminationGracePeriodSeconds a little more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sigv4-proxy"]
CMD ["run"]
