# syntax=docker/dockerfile:1
# imkit-push-bridge container image.
#
#   docker build -t imkit-push-bridge .
#   docker run --rm -p 8080:8080 -e BRIDGE_IMKIT_URL=https://chat.example.com imkit-push-bridge
#
# Two stages: the builder turns the source into a wheel and installs it into a
# virtualenv; the runtime stage copies only that virtualenv, so no compiler,
# pip cache or source tree reaches the final image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers live only here, for the rare dependency without a wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN /opt/venv/bin/pip install --upgrade pip wheel \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install /wheels/*.whl \
    && /opt/venv/bin/pip uninstall -y pip wheel setuptools

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="imkit-push-bridge" \
      org.opencontainers.image.description="IMKIT chat events to APNs/FCM pushes" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    BRIDGE_METRICS_PORT=9108 \
    BRIDGE_STORE=sqlite:////data/bridge.db
# A fixed uid/gid so Kubernetes runAsUser/fsGroup and volume permissions can name it.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin bridge \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /data
USER 10001:10001
EXPOSE 8080 9108
# serve/api answer /healthz on BRIDGE_PORT, a worker on BRIDGE_METRICS_PORT: healthy if either
# answers 2xx. Python's urllib, because the slim image has no curl (and should not get one).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request\nfor port in (os.environ.get('BRIDGE_PORT', '8080'), os.environ.get('BRIDGE_METRICS_PORT', '9108')):\n    try:\n        urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3)\n        raise SystemExit(0)\n    except OSError:\n        pass\nraise SystemExit(1)"]
ENTRYPOINT ["push-bridge"]
CMD ["serve"]
