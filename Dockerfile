# The buildx path (`cargo xtask image --builder buildx`): the static binary
# that `cargo xtask dist` already built and verified for each TARGETARCH,
# copied onto distroless. Nothing is compiled here, so this image and the
# native builder's carry the same /server bytes.
#
# BASE is a build argument so that tests can point it at a local registry;
# `cargo xtask image` always passes it, pinned by digest. Keep this default in
# step with `base` (and `base-digest`, once pinned) in
# [workspace.metadata.release]: xtask/tests/dockerfile.rs checks it.
ARG BASE=gcr.io/distroless/static-debian13:nonroot

FROM ${BASE}

# Set by buildx and buildah from --platform.
ARG TARGETARCH

# The OCI labels, filled in by `cargo xtask image` with the same values the
# native builder writes.
ARG SOURCE=""
ARG REVISION="unknown"
ARG VERSION=""
ARG CREATED=""
ARG TITLE="server"
ARG DESCRIPTION=""
ARG LICENSES=""
ARG BASE_NAME=""
ARG BASE_DIGEST=""
LABEL org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.title="${TITLE}" \
      org.opencontainers.image.description="${DESCRIPTION}" \
      org.opencontainers.image.licenses="${LICENSES}" \
      org.opencontainers.image.base.name="${BASE_NAME}" \
      org.opencontainers.image.base.digest="${BASE_DIGEST}"

# Owned by root and not writable by the runtime user.
COPY --chmod=0755 target/dist/linux-${TARGETARCH}/server /server

USER 65532:65532
EXPOSE 8080
# The binary is its own probe: distroless has no shell or curl.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/server", "healthcheck"]
ENTRYPOINT ["/server"]
