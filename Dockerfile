# The kiln image: one static binary on an empty base, for the controller (which runs as a
# non-root user) and the builders' agents (whose pods run them as root: they write into the
# node's build state). `docker build .` builds it from source; hack/cluster/images.sh builds
# the `prebuilt` target from a binary made by the same script, where no Rust image can be
# pulled. Build args: RUST_IMAGE (the builder image), VERSION and REVISION (OCI labels and
# `kiln --version`).
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm

# Everything of the image but the binary.
FROM scratch AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kiln" \
      org.opencontainers.image.description="Build container images on the Kubernetes nodes that run them" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/kiln-dev/kiln" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/kiln"]

# A root filesystem hack/build-static.sh made outside (hack/cluster/images.sh passes
# PREBUILT=.kiln-image/rootfs; the default is a placeholder the classic builder can copy).
FROM runtime AS prebuilt
ARG PREBUILT=hack/image
COPY ${PREBUILT}/ /

# From source.
FROM ${RUST_IMAGE} AS compile
ARG REVISION=unknown
ENV KILN_REVISION=${REVISION} CARGO_TARGET_DIR=/build
WORKDIR /src
COPY . .
RUN hack/build-static.sh /rootfs

FROM runtime
COPY --from=compile /rootfs/ /
