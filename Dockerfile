# segment-exporter daemon image: multi-stage, small runtime, non-root, state on a volume. The README's "Docker"
# section takes it from `docker build` to a first run (a connection, a segment, an export, a trigger).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked --bin segment-exporter \
    && strip target/release/segment-exporter \
    && mkdir -p /out/man1 /out/completions \
    && target/release/segment-exporter man > /out/man1/segment-exporter.1 \
    && target/release/segment-exporter completions bash > /out/completions/segment-exporter

FROM debian:bookworm-slim
# TLS roots are compiled into the binary (webpki-roots), so the runtime needs no CA bundle.
RUN groupadd --system --gid 10001 segment-exporter \
    && useradd --system --uid 10001 --gid segment-exporter --home-dir /data --shell /usr/sbin/nologin segment-exporter \
    && mkdir -p /data /etc/segment-exporter && chown segment-exporter:segment-exporter /data
COPY --from=build /src/target/release/segment-exporter /usr/local/bin/segment-exporter
COPY --from=build /out/man1/segment-exporter.1 /usr/local/share/man/man1/segment-exporter.1
COPY --from=build /out/completions/segment-exporter /usr/share/bash-completion/completions/segment-exporter
COPY packaging/docker/segment-exporter.toml /etc/segment-exporter/segment-exporter.toml
ENV SEGMENT_EXPORTER_CONFIG=/etc/segment-exporter/segment-exporter.toml
USER segment-exporter
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9185
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["segment-exporter", "healthcheck"]
# The daemon is PID 1: it handles SIGTERM (graceful stop within daemon.shutdown_grace) and starts no children.
STOPSIGNAL SIGTERM
ENTRYPOINT ["segment-exporter"]
CMD ["daemon"]
