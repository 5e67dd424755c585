# session-sidecar's container image. `make image` builds it with buildah from a local Debian base (no registry
# needed); any builder works:
#   docker build --build-arg BASE_IMAGE=<your registry>/python:3.11-slim-bookworm -t session-sidecar .
# BASE_IMAGE builds the wheel and the virtualenv; RUNTIME_IMAGE (default: the same image) runs it. They must carry
# the same python3 (>= 3.11) at the same path: the virtualenv links to it. The runtime stage has no RUN step, so a
# runtime image without a shell (e.g. a distroless python3 of the same Debian release) works too.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=${BASE_IMAGE}

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# The CA bundle and pip.conf of the building machine (a local mirror, a TLS-inspecting proxy) arrive as optional
# build secrets, so they reach pip without landing in a layer. The pip cache survives between builds.
RUN --mount=type=secret,id=cacert --mount=type=secret,id=pipconf --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore; \
    python3 -m venv /opt/session-sidecar; \
    /opt/session-sidecar/bin/pip wheel --quiet --no-deps --wheel-dir /wheels .; \
    /opt/session-sidecar/bin/pip install --quiet /wheels/session_sidecar-*.whl; \
    /opt/session-sidecar/bin/pip uninstall --quiet --yes pip setuptools; \
    rm -f /opt/session-sidecar/bin/activate* /opt/session-sidecar/bin/Activate.ps1; \
    /opt/session-sidecar/bin/session-sidecar --help >/dev/null

FROM ${RUNTIME_IMAGE}
# the package version (pyproject.toml); image/build.sh passes it
ARG VERSION=""
LABEL org.opencontainers.image.title="session-sidecar" \
      org.opencontainers.image.description="Envoy ext_authz sidecar: resolves session cookies in Redis and injects trusted identity headers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/session-sidecar /opt/session-sidecar
# No bytecode writes: the chart runs the root filesystem read-only (the .pyc files were compiled at install).
ENV PATH=/opt/session-sidecar/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The chart's securityContext runs as 65532:65532 (runAsNonRoot needs a numeric UID to verify).
USER 65532:65532
# gRPC ext_authz + health, HTTP ext_authz / forward-auth, admin (/healthz, /readyz, /metrics)
EXPOSE 9191 9192 9090
ENTRYPOINT ["session-sidecar"]
CMD ["serve"]
