# syntax=docker/dockerfile:1
# An nginx image on a Debian base, in the style of the official image.
FROM debian:bookworm-slim

LABEL maintainer="rbuild tests <tests@example.invalid>" \
      org.opencontainers.image.title="nginx" \
      org.opencontainers.image.description="nginx on debian"

ENV NGINX_VERSION=1.25.4
ENV NJS_VERSION 0.8.3

RUN set -x \
    && groupadd --system --gid 101 nginx \
    && useradd --system --gid nginx --no-create-home --home /nonexistent \
       --comment "nginx user" --shell /bin/false --uid 101 nginx \
    && apt-get update \
    # comments inside a continuation are dropped
    && apt-get install --no-install-recommends --no-install-suggests -y \
       nginx ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log

COPY nginx.conf /etc/nginx/nginx.conf
COPY --chmod=0755 docker-entrypoint.sh /
COPY ["conf.d/default.conf", "/etc/nginx/conf.d/default.conf"]

WORKDIR /usr/share/nginx/html
EXPOSE 80/tcp 443

HEALTHCHECK --interval=30s --timeout=3s --retries=3 \
  CMD curl -fsS http://localhost/ || exit 1

STOPSIGNAL SIGQUIT
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["nginx", "-g", "daemon off;"]
