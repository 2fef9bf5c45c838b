# The reference FastPort broker (`python3 -m broker ...`). Its dependencies come from a
# wheelhouse the lab downloads on the host (wheels/, with pip's own wheel), so the build
# itself needs no package index; only Debian's python3 is installed from the mirror.
ARG BASE=fastport-lab/base:bookworm
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY wheels/ /tmp/wheels/
RUN python3 "$(ls /tmp/wheels/pip-*.whl)/pip" install --no-index --find-links /tmp/wheels \
        --no-cache-dir --disable-pip-version-check --break-system-packages --root-user-action=ignore \
        -r /tmp/wheels/requirements.txt \
    && rm -rf /tmp/wheels
COPY broker/ /opt/fastport/broker/
ENV PYTHONPATH=/opt/fastport PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/fastport
CMD ["python3", "-m", "broker", "--host", "0.0.0.0", "--port", "8080", "--store", "memory"]
