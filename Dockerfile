# syntax=docker/dockerfile:1
#
# Latent Atlas: one image for every process (web, migrate, CPU and GPU workers).
#
#   CPU build (web, migrate, worker-cpu):  docker build -t latent-atlas:cpu .
#   GPU build (worker-gpu):                docker build -t latent-atlas:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# Why python:3.11-slim for the GPU image too, and not nvidia/cuda:*-runtime:
# the PyTorch CUDA wheels carry their own CUDA runtime, cuBLAS and cuDNN (as
# nvidia-* wheels), so the container needs only the host's NVIDIA driver, which
# the NVIDIA container toolkit mounts in at run time (compose: deploy.resources.
# reservations.devices). A CUDA base image would ship a second copy of those
# libraries (gigabytes) and, on Ubuntu 22.04, Python 3.10, below our >= 3.11.
# So TORCH_INDEX_URL is the only difference between the CPU and the CUDA image.
#
# Invariants a reader must keep:
# * torch is installed BEFORE the project, from TORCH_INDEX_URL, and pinned by a
#   constraints file afterwards, so no later `pip install` can swap the CPU/CUDA
#   build for PyPI's default one.
# * No model weights, Hugging Face cache or pip cache in the image: models are
#   fetched at run time into HF_HOME / ATLAS_DATA_DIR, which are volumes.
# * The app runs as an unprivileged user; the virtual environment is root-owned
#   (read-only to the app).
# * No HEALTHCHECK here: the image also runs workers and one-off commands, which
#   serve no HTTP; docker-compose.yml gives the web service its health check.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder ----
FROM ${PYTHON_IMAGE} AS builder

# Index that decides which torch build comes: .../whl/cpu, or a CUDA one such
# as .../whl/cu128 (the host driver must support that CUDA version; note that
# the cu124 index stops at torch 2.6).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# pip requirement for torch; transformers 5 needs torch >= 2.6. Pin it here
# (e.g. "torch==2.9.1") for reproducible images.
ARG TORCH_REQUIREMENT=torch>=2.6
# Optional extras of the project to install, comma separated (e.g. "test"); sae-lens is a core dependency.
ARG ATLAS_EXTRAS=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A compiler only in the builder, for any dependency without a wheel; the
# runtime stage gets the virtual environment alone. (Unpinned: Debian's
# stable suite only takes fixes, and nothing of it reaches the runtime image.)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3013
RUN python -m venv "$VIRTUAL_ENV" \
 && pip install --no-cache-dir --upgrade pip setuptools wheel

# 1) torch first, from the chosen index; then pin exactly what came.
#    (Its version is the TORCH_REQUIREMENT build argument.)
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "$TORCH_INDEX_URL" "$TORCH_REQUIREMENT" \
 && python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
      > /opt/torch-constraint.txt \
 && cat /opt/torch-constraint.txt

# 2) The project's dependencies, read from pyproject.toml alone, so this layer
#    is rebuilt only when the dependencies change (not on every code edit).
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/requirements_from_pyproject.py /opt/
RUN python /opt/requirements_from_pyproject.py pyproject.toml "$ATLAS_EXTRAS" \
      > /opt/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /opt/torch-constraint.txt -r /opt/requirements.txt

# 3) The project itself (non-editable: the source tree is not in the image).
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c /opt/torch-constraint.txt ".${ATLAS_EXTRAS:+[$ATLAS_EXTRAS]}" \
 && latent-atlas --help > /dev/null

# ---------------------------------------------------------------- runtime ----
FROM ${PYTHON_IMAGE} AS runtime

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
LABEL org.opencontainers.image.title="latent-atlas" \
      org.opencontainers.image.description="Latent Atlas: a lab portal for exploring language-model latent spaces" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.latent-atlas.torch-index="${TORCH_INDEX_URL}"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ATLAS_DATA_DIR=/data \
    ATLAS_HOST=0.0.0.0 \
    ATLAS_PORT=8050 \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache

# Unprivileged user with a fixed UID. /data and /cache/huggingface exist and
# belong to it, so fresh named volumes mounted there inherit that ownership.
RUN groupadd --system --gid 10001 atlas \
 && useradd --system --uid 10001 --gid atlas --create-home --home-dir /home/atlas \
      --shell /usr/sbin/nologin atlas \
 && mkdir -p /data /cache/huggingface /app \
 && chown -R atlas:atlas /data /cache

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
USER 10001:10001
EXPOSE 8050

ENTRYPOINT ["latent-atlas"]
CMD ["web"]
