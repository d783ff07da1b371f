# ShopPulse image: `docker build -t shoppulse .`. The command picks the role: `worker` (the
# default, the stream worker) or e.g. `retrain --every 1h` (the periodic retrain worker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package build needs (pyproject names README.md as the readme), so the local
# .venv, caches and data never enter the image.
COPY pyproject.toml README.md ./
COPY shoppulse ./shoppulse
COPY stream ./stream
COPY models ./models
COPY workers ./workers
RUN pip install . \
    && useradd --create-home --uid 10001 shoppulse

# Not root: the code is installed read-only for this user, and a writable home is its cwd.
USER shoppulse
WORKDIR /home/shoppulse
EXPOSE 6066
ENTRYPOINT ["shoppulse"]
CMD ["worker"]
