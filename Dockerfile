# optimlab: API, workers and migrations in one image (docker-compose.yml runs each role).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned, from PyTorch's index: CUDA wheels by default; build with
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU-only image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0

WORKDIR /app
COPY .ci/constraints.txt .ci/constraints.txt
COPY pyproject.toml README.md ./
COPY optim_engine optim_engine
COPY service service
COPY workers workers
COPY migrations migrations
# Editable, so `optimlab db upgrade` finds migrations/ next to the code.
RUN pip install -c .ci/constraints.txt -e '.[pytorch-optimizer,flower]' \
    && useradd --uid 10001 --create-home optimlab \
    && mkdir -p /var/lib/optimlab/data /var/lib/optimlab/checkpoints \
    && chown -R optimlab /var/lib/optimlab

USER optimlab
ENV OPTIMLAB_HOME=/var/lib/optimlab \
    OPTIMLAB_DATA_DIR=/var/lib/optimlab/data \
    OPTIMLAB_CHECKPOINT_DIR=/var/lib/optimlab/checkpoints
EXPOSE 8000
CMD ["optimlab", "api", "--host", "0.0.0.0", "--port", "8000"]
