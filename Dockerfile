# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, ship only the binary on a
# minimal glibc image that has CA certificates (HTTPS to userli) and no shell.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin userli-postfix-adapter \
 && strip target/release/userli-postfix-adapter \
 && mkdir -p /state

FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /src/target/release/userli-postfix-adapter /userli-postfix-adapter
# Demo data for the compose `demo` profile (LOOKUP_BACKEND=fixture).
COPY examples/fixtures/demo.toml /usr/share/userli-postfix-adapter/demo.toml
# The embedded quota store (STATE_DIRECTORY); mount a volume here to keep quotas
# across container re-creation.
COPY --from=build --chown=10001:10001 /state /var/lib/userli-postfix-adapter
# Same uid as upstream's image, so volume permissions carry over.
USER 10001:10001
EXPOSE 10001 10002 10003
ENTRYPOINT ["/userli-postfix-adapter"]
