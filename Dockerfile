# Multi-stage build of the one `ordo` binary; every role is a subcommand of it.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ordo

FROM debian:bookworm-slim
# curl serves the health checks (docker-compose.yml): GET /readyz of the API, /healthz of the other roles.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ordo /usr/local/bin/ordo
# Runs unprivileged; roles keep no local state.
USER 10001:10001
ENTRYPOINT ["ordo"]
CMD ["--help"]
