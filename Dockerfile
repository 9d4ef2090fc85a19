# syntax=docker/dockerfile:1
# The Permafrost operator image: `docker build -t ghcr.io/permafrost-dev/permafrost:0.1.0 .`
# Two stages: the first builds wheels of Permafrost and every dependency; the second installs
# only those wheels (no compiler, no network) into a slim Python and runs as a non-root user.
# NB: the base image is pinned by digest (the multi-platform index of python:3.13-slim-trixie,
# Python 3.13.14, as docker-library/repo-info records it); update the tag and the digest together.
# It is a build argument only so that a builder that cannot pull it can name an equivalent Python
# image of its own, pinned too (`make image` builds one from Debian trixie's packages:
# hack/operator-image.sh); left alone, the pinned image is used.
ARG BASE_IMAGE=python:3.13-slim-trixie@sha256:9662417aace5ae7b8e2609cce472b72a8958e134ba372808abe9cc1a0c0125e6

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
# operator/permafrost/library links to the built-in policies; the wheel carries copies of them.
COPY deploy/policies/ deploy/policies/
RUN pip wheel --wheel-dir /wheels .

FROM ${BASE_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# NB: the user is named in /etc/passwd and /etc/group too: Kubernetes passes only the image's
# uid to the runtime, which takes the group from /etc/passwd, so a pod that sets no runAsGroup
# would otherwise run as group 0.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels permafrost \
    && permafrost --version \
    && echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
    && echo 'nonroot:x:65532:' >>/etc/group
# 65532: the conventional "nonroot" user; deploy/operator.yaml runs the pod as the same ids.
USER 65532:65532
WORKDIR /tmp
# webhooks (HTTPS), Prometheus metrics, liveness probe
EXPOSE 9443 9090 8080
ENTRYPOINT ["permafrost"]
CMD ["run", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
