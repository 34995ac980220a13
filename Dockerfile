# plano_fast gateway image.
#
#   docker build -t plano-fast .
#   docker run -p 12000:12000 -v plano-data:/var/lib/plano_fast plano-fast
#   docker compose up        # the gateway and PostgreSQL: see docker-compose.yaml
#
# Ports
#   12000  the model listener (the config's listener port; the ENTRYPOINT binds 0.0.0.0)
#   12002  the admin API, only when the config sets plano_fast.admin_port; it binds
#          plano_fast.admin_address (127.0.0.1 by default: unreachable from outside the
#          container until the config says 0.0.0.0, which needs an admin key)
# Volume
#   /var/lib/plano_fast  the working directory: the embedded SQLite store (plano_fast.db,
#          schema created on the first start of an empty volume) and the usage journal.
#          A bind mount must be writable by uid 10001.
# Environment
#   PLANO_FAST_CONFIG      the config (default: the example, /etc/plano_fast/plano_config.yaml;
#                          mount yours over it or point this elsewhere)
#   OPENAI_API_KEY, ...    whatever $VARs the config references
#   PLANO_FAST_ADMIN_KEY   the admin API key (when admin_port is set)
#   PLANO_FAST_MASTER_KEY  managed mode's master key (plano_fast.managed: true)
#   PLANO_FAST_LOG_LEVEL   INFO by default
#   PLANO_FAST_HEALTH_URL  what HEALTHCHECK asks (change it with the listener's port)
# Arguments after the image name are added to `plano-fast serve`, e.g. --migrate (bring an
# older or empty PostgreSQL schema up to date first), --strict, --workers 4.
#
# tests/test_docker_build.py runs these steps without a container engine: the wheel built
# from exactly the files copied below (.dockerignore applied), installed in a fresh venv,
# the ENTRYPOINT run in an empty directory, then /healthz, the HEALTHCHECK command and a
# proxied request.

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY plano_fast ./plano_fast
# The compiled modules are required here (no silent fall-back to the pure-Python twins).
RUN PLANO_FAST_REQUIRE_EXTENSION=1 pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/plano_fast --create-home plano
COPY examples/plano_config.yaml /etc/plano_fast/plano_config.yaml
ENV PLANO_FAST_CONFIG=/etc/plano_fast/plano_config.yaml \
    PLANO_FAST_HEALTH_URL=http://127.0.0.1:12000/healthz \
    PYTHONUNBUFFERED=1
USER plano
WORKDIR /var/lib/plano_fast
VOLUME /var/lib/plano_fast
EXPOSE 12000 12002
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['PLANO_FAST_HEALTH_URL'], timeout=4)"]
ENTRYPOINT ["plano-fast", "serve", "--host", "0.0.0.0"]
