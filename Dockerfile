# trollproxy image: built on Debian 12 (bookworm), run as a non-root user with only runtime libraries.
# Build:  docker build -t trollproxy .   (or podman build; tests/container builds it with podman)
# Run:    docker run -v $PWD/configs:/etc/trollproxy:ro -v trollproxy-state:/var/lib/trollproxy \
#           -e MONGODB_URI=... -e TROLLPROXY_UPSTREAM_KEYS=... -p 8004:8004 \
#           trollproxy --config /etc/trollproxy/config-openhands-prod.json
# (the config directory, not a file: a reload after `git pull` then reads the new file)

FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      meson ninja-build pkg-config g++ \
      libcpp-httplib-dev libsimdjson-dev libcurl4-openssl-dev libmongoc-dev libbson-dev libsqlite3-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY meson.build meson_options.txt ./
COPY libtrollproxy libtrollproxy
COPY server server
COPY examples examples
COPY configs configs
# An optimized release build, installed stripped.
RUN meson setup /build --buildtype=release -Dtests=false -Dmongodb=enabled \
      --prefix=/usr/local --libdir=lib \
 && ninja -C /build \
 && DESTDIR=/stage meson install -C /build --no-rebuild --strip \
 && /build/server/trollproxy --check-config configs/config-openhands-prod.json \
 && /build/server/trollproxy --check-config configs/config-ohmygpt-prod.json
# What the runtime image takes, in one tree: the programs and the shared library with its
# soname link. cp -a keeps links as links (COPY of a glob would copy each link as a file).
RUN install -d /runtime/usr/local/bin /runtime/usr/local/lib \
 && cp -a /stage/usr/local/bin/. /runtime/usr/local/bin/ \
 && cp -a /stage/usr/local/lib/libtrollproxy.so.* /runtime/usr/local/lib/

FROM debian:bookworm-slim
# Runtime libraries of trollproxy and libtrollproxy (Debian 12 package names), CA
# certificates for the HTTPS upstream, curl for the container health check.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libcpp-httplib0.11 libsimdjson14 libcurl4 libmongoc-1.0-0 libbson-1.0-0 libsqlite3-0 \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 trollproxy \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/trollproxy \
      --shell /usr/sbin/nologin trollproxy \
 && install -d -o trollproxy -g trollproxy -m 0750 /var/lib/trollproxy \
 && install -d -m 0755 /etc/trollproxy
COPY --from=build /runtime/ /
RUN ldconfig && trollproxy --help >/dev/null
# The charge journal (trollproxy-PORT.journal: charges the ledger could not take
# yet) lives in the working directory; mount a volume here so it survives restarts.
WORKDIR /var/lib/trollproxy
VOLUME /var/lib/trollproxy
USER trollproxy:trollproxy
ENTRYPOINT ["trollproxy"]
CMD ["--config", "/etc/trollproxy/config.json"]
