# tongda: one image for the router, the four channel services and the topics job; the
# Kubernetes manifests (deploy/k8s) choose the command, e.g. `python -m services.router`.
# Not built in CI: build it with `docker build -t tongda:latest .` (how it was verified by
# hand, without a daemon: docs/deployment.md, "How the Dockerfile was verified").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The SIP voice provider speaks with espeak-ng and resamples with sox; tzdata gives zone.tab
# (a borrower's country from the time zone, for public holidays).
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng sox tzdata \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 tongda \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tongda

# Installed as a package (plans.yaml and the Lua scripts are package data), with the
# tested dependency versions; the sources are removed afterwards.
COPY pyproject.toml constraints.txt /src/
COPY shared /src/shared
COPY services /src/services
COPY tools /src/tools
RUN pip install -c /src/constraints.txt /src && rm -rf /src

WORKDIR /app
USER 10001:10001
EXPOSE 8080 8081 8082 8083 8084
CMD ["python", "-m", "services.router"]
