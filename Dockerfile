# syntax=docker/dockerfile:1

# Build stage. The cache mounts keep the crate registry and target/ between builds, so a
# source change does not refetch or rebuild every dependency (needs BuildKit, the default
# builder in current Docker).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out /empty-state \
 && find target/release -maxdepth 1 -type f -perm -u+x -name 'flux-status*' -exec cp {} /out/ \;

# Runtime stage: distroless with glibc, no shell, running as uid 65532 ("nonroot").
# Not a static (musl) binary: ring's C and assembly build as-is against Debian's glibc,
# and DNS then goes through glibc's resolver, which handles Kubernetes search domains the
# usual way. The cc image also carries the CA certificates the provider TLS checks use.
# Good enough for a sidecar; a static build can come later.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# The default --state-dir, writable by nonroot (65532) when no volume is mounted there.
COPY --from=build --chown=65532:65532 /empty-state /var/lib/flux-status
USER nonroot:nonroot
# 3000: ingest (fluxd's websocket and events; binds 127.0.0.1 unless --listen says otherwise).
# 8080: /metrics, /healthz, /readyz.
EXPOSE 3000 8080
ENTRYPOINT ["/usr/local/bin/flux-status"]
