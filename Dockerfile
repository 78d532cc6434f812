# syntax=docker/dockerfile:1
# Operator image. Runs as a numeric non-root user on a read-only root filesystem: nothing is
# written outside /tmp (HOME=/tmp, no bytecode written at run time).
# Build from the repository root:  docker build -t dsa-operator .
# BASE: any image with `python` (3.11+) and `pip` on PATH, like the official python image;
# `make images` passes a Debian base made locally (tests/images.py) and builds this same file.
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /src
# Dependencies first, read from pyproject.toml alone: a code change reuses this layer.
# `python -P`: the build context's folders (operator/, runtime/) must never shadow the stdlib.
COPY pyproject.toml ./
RUN python -P -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY operator ./operator
COPY runtime ./runtime
# Bytecode is compiled here, at build time, so a read-only filesystem costs no start-up.
RUN pip install --no-deps . \
    && python -P -m compileall -q "$(python -P -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && python -P -c "import dsa_operator.cli" \
    && rm -rf /src

WORKDIR /tmp
USER 65532:65532
# The chart and deploy/ pass `run` and its options as args; `docker run IMAGE --help` lists the commands.
ENTRYPOINT ["dsa-operator"]
CMD ["run"]
