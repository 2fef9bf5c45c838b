# PostgreSQL from Debian's own package, for machines that reach Debian but no image registry.
# It behaves like the official `postgres` image where the lab relies on it: entrypoint
# docker-entrypoint.sh (initdb on an empty PGDATA, then `exec "$@"`), POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_HOST_AUTH_METHOD, PGDATA, `postgres` and `pg_isready` on PATH,
# STOPSIGNAL SIGINT (fast shutdown). Unlike it: clients on the server's own networks (samenet:
# the bridge gateway that Docker's port publishing connects from, or the host's loopback under
# host networking) are trusted, so the lab needs no password; others need POSTGRES_PASSWORD.
ARG BASE=fastport-lab/base:bookworm
FROM ${BASE}
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls -d /usr/lib/postgresql/*/bin | head -n 1)" /usr/lib/postgresql/bin \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY chaos/containers/dockerfiles/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
