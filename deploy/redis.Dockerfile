# Redis from Debian's redis-server package, for trying the several-node topology where no image
# registry is reachable: scripts/test-image.sh builds it on the same local Debian base as the
# bridge image. No build context is needed:
#
#   docker build -t imkit-push-bridge-redis --build-arg BASE_IMAGE=debian:bookworm-slim - < deploy/redis.Dockerfile
#   docker run --rm --network host imkit-push-bridge-redis --port 6379 --bind 127.0.0.1
#
# For evaluation and tests only, like the chart's `redis.enabled`: no persistence, no password.

ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
# The package's system user; nothing is written (no RDB, no AOF), so a read-only root works.
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
ENTRYPOINT ["redis-server"]
CMD ["--save", "", "--appendonly", "no"]
