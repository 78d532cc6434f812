# syntax=docker/dockerfile:1
# Operator image. Runs as a numeric non-root user on a read-only root filesystem: nothing is
# written outside /tmp (HOME=/tmp, no bytecode written at run time).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime
# Bytecode is compiled here, at build time, so a read-only filesystem costs no start-up.
RUN pip install . \
    && python -m compileall -q "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf /src

WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["dsa-operator", "run"]
