# The lab's Toxiproxy-compatible fault proxy (stdlib only), as a drop-in for
# ghcr.io/shopify/toxiproxy: same entrypoint arguments (-host, -port, -config).
# With `-port 0` it picks a free port and prints one JSON line saying which (label below).
ARG BASE=fastport-lab/base:bookworm
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
# chaos/toxiproxy and the lab modules it imports (the builder puts exactly those in the context;
# for docker-compose.local.yml, .dockerignore lets them in)
COPY chaos/ /opt/fastport/chaos/
ENV PYTHONPATH=/opt/fastport PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LABEL fastport-lab.listening-line=json
EXPOSE 8474
ENTRYPOINT ["python3", "-m", "chaos.toxiproxy.cli"]
CMD ["-host", "0.0.0.0", "-port", "8474"]
