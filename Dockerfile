# ShopPulse worker image: `docker build -t shoppulse .`; the command picks the role
# (`worker` by default, `retrain --every 1h` for the periodic worker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shoppulse ./shoppulse
COPY stream ./stream
COPY models ./models
COPY workers ./workers
RUN pip install . && useradd --create-home --uid 10001 shoppulse

USER shoppulse
EXPOSE 6066
ENTRYPOINT ["shoppulse"]
CMD ["worker"]
