# Multi-stage build: compile with the full toolchain, run on a slim base as non-root.
FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
# aws-lc-rs (JWT signatures) builds C code.
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang perl make && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin tickstream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home tickstream
COPY --from=build /src/target/release/tickstream /usr/local/bin/tickstream
USER tickstream
ENV TICKSTREAM_LISTEN=0.0.0.0:8080 TICKSTREAM_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# SIGTERM closes every WebSocket with 1012 and exits within 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tickstream"]
