# syntax=docker/dockerfile:1
# Cloud Run Sandbox image: `gcloud run deploy --source .` builds this file.
# Every step that does real work is a script that is also run and tested outside Docker
# (scripts/build-rootfs.sh builds the same root filesystem that scripts/setup.sh builds).

# --- 1. server and agent binaries ---------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

# --- 2. sandbox root filesystem -----------------------------------------------------------------
# A separate stage keeps debootstrap and gcc (for the statx shim) out of the final image, and
# BuildKit runs it in parallel with stage 1. runsc cannot run inside `docker build`, hence
# --no-smoke-test; the same script with the smoke test runs in scripts/setup.sh and CI.
FROM debian:bookworm-slim AS rootfs
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        debootstrap debian-archive-keyring gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/build-rootfs.sh /src/scripts/build-rootfs.sh
COPY sandbox-image/ /src/sandbox-image/
RUN /src/scripts/build-rootfs.sh --no-smoke-test /var/lib/cloud-run-sandbox/rootfs

# --- 3. runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# A pinned gVisor release (the Debian package is from 2022). Bump deliberately: the server
# detects what the installed runsc supports, but checkpoints do not restore across versions.
ARG GVISOR_VERSION=20250818
# tini is PID 1: forwards SIGTERM from Cloud Run to the server and reaps orphans.
# iproute2/nftables: per-sandbox network namespaces and egress filtering when network is on.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl tini iproute2 nftables \
 && rm -rf /var/lib/apt/lists/* \
 && cd /tmp \
 && url="https://storage.googleapis.com/gvisor/releases/release/${GVISOR_VERSION}/x86_64" \
 && curl -fsSLO "${url}/runsc" \
 && curl -fsSLO "${url}/runsc.sha512" \
 && sha512sum -c runsc.sha512 \
 && install -m 0755 runsc /usr/local/bin/runsc \
 && rm -f runsc runsc.sha512 \
 && runsc --version
COPY --from=rootfs /var/lib/cloud-run-sandbox/rootfs /var/lib/cloud-run-sandbox/rootfs
COPY --from=build /src/target/release/sandbox-server /src/target/release/sandbox-agent /usr/local/bin/
RUN install -d -m 0700 /var/lib/cloud-run-sandbox/checkpoints /var/lib/cloud-run-sandbox/snapshots
ENV PORT=8080 \
    SANDBOX_LISTEN_ADDR=0.0.0.0 \
    SANDBOX_ROOTFS=/var/lib/cloud-run-sandbox/rootfs
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/sandbox-server"]
