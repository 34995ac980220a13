# plano_fast gateway image.  Build: docker build -t plano-fast .
# Run:   docker run -p 12000:12000 -v $PWD/plano_config.yaml:/etc/plano_fast/plano_config.yaml plano-fast
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY plano_fast ./plano_fast
RUN PLANO_FAST_REQUIRE_EXTENSION=1 pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --home /var/lib/plano_fast --create-home plano
COPY examples/plano_config.yaml /etc/plano_fast/plano_config.yaml
USER plano
WORKDIR /var/lib/plano_fast
EXPOSE 12000
STOPSIGNAL SIGTERM
ENTRYPOINT ["plano-fast", "serve", "--config", "/etc/plano_fast/plano_config.yaml", "--host", "0.0.0.0"]
