# walhook in a container: build with the Rust toolchain, run on Debian slim.
#
#   docker build -t walhook .
#   docker run --rm -v "$PWD/walhook.toml:/etc/walhook/walhook.toml:ro" walhook run
#
# The config is read from $WALHOOK_CONFIG (/etc/walhook/walhook.toml). See
# docker-compose.yml for a complete setup with Postgres and a receiver.

FROM rust:1-bookworm AS build
WORKDIR /src
# The sources the binary is built from; `sql/` holds the migrations and the demo ERP it embeds.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
# A workspace member: cargo reads its manifest, though only walhook is built.
COPY bench ./bench
RUN cargo build --release --locked --bin walhook \
    && strip target/release/walhook

FROM debian:bookworm-slim
# CA certificates for https webhooks and sslmode=verify-full.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/walhook /usr/local/bin/walhook
ENV WALHOOK_CONFIG=/etc/walhook/walhook.toml
USER 65532:65532
# /metrics, /healthz, /readyz and the admin API, when [http] listen is 0.0.0.0:9187.
EXPOSE 9187
ENTRYPOINT ["walhook"]
CMD ["run"]
