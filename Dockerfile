# SDXL LoRA Studio: UI + HTTP API on port 7860, for NVIDIA GPUs.
#
#   docker build -t sdxl-lora-studio .
#   docker run --gpus all -p 7860:7860 -e STUDIO_AUTH="me:a-long-password" \
#       -v studio-data:/data/studio -v hf-cache:/data/huggingface sdxl-lora-studio
#
# The base is a slim Python image: the torch wheels from PyPI bundle the CUDA runtime
# (nvidia-* packages), so only the host's NVIDIA driver and the NVIDIA container toolkit are
# needed (`--gpus all`). The app listens on 0.0.0.0 inside the container and therefore refuses
# to start without a login: set STUDIO_AUTH="user:password[,user2:password2]" (or mount a file
# and set STUDIO_AUTH_FILE).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1 \
    STUDIO_HOME=/data/studio \
    HF_HOME=/data/huggingface \
    STUDIO_PORT=7860

# OpenCV (face detection) needs libGL and GLib even without a display.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# UID 1000 is also the user Hugging Face Spaces run Docker images as.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin studio \
    && mkdir -p /data/studio /data/huggingface \
    && chown -R studio:studio /data

WORKDIR /app
# Pinned versions (requirements.txt) installed first, so code changes reuse this layer.
COPY requirements.txt /app/requirements.txt
RUN pip install --no-cache-dir -r /app/requirements.txt

# The code stays owned by root: the app user can write only its data volumes.
COPY . /app

# The workspace (datasets, runs, gallery, API keys) and the Hugging Face model cache.
VOLUME ["/data/studio", "/data/huggingface"]

USER 1000:1000
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STUDIO_PORT', '7860') + '/health', timeout=4)"]

CMD ["python", "app.py", "--host", "0.0.0.0"]
