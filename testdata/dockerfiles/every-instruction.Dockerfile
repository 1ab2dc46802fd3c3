# syntax=docker/dockerfile:1
# check=skip=JSONArgsRecommended
# One line per instruction kind, and every flag.
ARG BASE=alpine:3.19
FROM --platform=linux/amd64 ${BASE} AS base
MAINTAINER Someone <someone@example.invalid>
LABEL version="1.0" description='a "quoted" value' legacy=yes
LABEL single value with spaces
ENV PATH=/opt/bin:$PATH HOME=/root
ENV LEGACY some value
ARG NAME VERSION=1.2.3 EMPTY=
SHELL ["/bin/sh", "-eu", "-c"]
RUN echo shell form
RUN ["/bin/echo", "exec", "form"]
RUN --mount=type=bind,source=.,target=/ctx,from=base,rw \
    --mount=type=cache,target=/var/cache/apk,id=apk,sharing=private,mode=0755,uid=0,gid=0,ro \
    --mount=type=tmpfs,target=/tmp,size=65536 \
    --mount=type=secret,id=token,target=/run/secrets/token,env=TOKEN,required,mode=0400,uid=0,gid=0 \
    --mount=type=ssh,id=default,target=/run/ssh.sock,required=true,mode=0600 \
    --network=host --security=insecure \
    ls /ctx
RUN --network=default --security=sandbox true
CMD echo cmd
ENTRYPOINT ["/bin/sh", "-c"]
EXPOSE 80 443/tcp 53/udp
COPY --from=base --chown=1000:1000 --chmod=644 --link --parents --exclude=*.md --exclude=tmp -- a b /dst/
COPY ["with space", "/dst/with space"]
ADD --chown=1:1 --chmod=600 --link=false --keep-git-dir=true https://github.com/moby/buildkit.git#v0.13.0 /buildkit
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d --exclude=*.txt https://example.invalid/f.tar.gz /f.tar.gz
VOLUME ["/data", "/logs"]
VOLUME /cache /tmp/x
USER app:app
WORKDIR /work
ONBUILD RUN echo triggered
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=1m --timeout=10s --start-period=5s --start-interval=1s --retries=5 CMD ["/bin/check", "--quick"]
HEALTHCHECK NONE
