# RUN --mount=type=cache keyed as BuildKit keys it: by its id and, when
# uid/gid/mode are given, by the directory they make (another cache for each
# owner and mode, and not the id's plain one; `uid=1000` and
# `uid=1000,gid=0,mode=0755` are one); beside source= they do nothing. from= a
# stage: another cache, its source's owner and mode kept; with uid/gid/mode the
# stage's /cache made with them. source= without from= mounts a directory of the
# cache. The default id is the target as written (a relative one shared across
# WORKDIRs). Every step writes before it lists, so a rerun against the same
# dockerd (whose cache mounts persist) lists the same. No mode with group or
# other write bits: dockerd's umask (022) drops them, buildkitd's (0) does not.
cat > Dockerfile <<'D'
FROM busybox AS st
RUN mkdir -p /x/y && echo seed > /x/y/f && chown 7:8 /x/y && chmod 711 /x/y
FROM busybox
RUN --mount=type=cache,id=ck1,target=/c,uid=1000 touch /c/u1000 && ls /c > /l-1000 && stat -c '%u:%g:%a' /c > /s-1000
RUN --mount=type=cache,id=ck1,target=/c,uid=2000 touch /c/u2000 && ls /c > /l-2000 && stat -c '%u:%g:%a' /c > /s-2000
RUN --mount=type=cache,id=ck1,target=/c,mode=0700 touch /c/m700 && ls /c > /l-700 && stat -c '%u:%g:%a' /c > /s-700
RUN --mount=type=cache,id=ck1,target=/c,gid=33 touch /c/g33 && ls /c > /l-g33 && stat -c '%u:%g:%a' /c > /s-g33
RUN --mount=type=cache,id=ck1,target=/c touch /c/plain && ls /c > /l-plain && stat -c '%u:%g:%a' /c > /s-plain
RUN --mount=type=cache,id=ck1,target=/c,uid=0 touch /c/uid0 && ls /c > /l-uid0
RUN --mount=type=cache,id=ck1,target=/c,uid=1000,gid=0,mode=0755,sharing=locked touch /c/again && ls /c > /l-again
RUN --mount=type=cache,id=ck2,from=st,source=/x/y,target=/m,uid=1000,mode=0700 stat -c '%u:%g:%a' /m > /s-src && touch /m/new && ls /m > /l-src
RUN --mount=type=cache,id=ck2,from=st,source=/x/y,target=/m ls /m > /l-src2
RUN --mount=type=cache,id=ck2,target=/m touch /m/own && ls /m > /l-own
RUN --mount=type=cache,id=ck2,from=st,target=/m,gid=5,mode=0700 stat -c '%u:%g:%a' /m > /s-mk && touch /m/mk && ls /m > /l-mk
WORKDIR /w1
RUN --mount=type=cache,target=ck-rel touch ck-rel/r
WORKDIR /w2
RUN --mount=type=cache,target=ck-rel/ ls ck-rel > /l-rel
RUN --mount=type=cache,target=/w1/ck-rel touch /w1/ck-rel/abs && ls /w1/ck-rel > /l-rel-abs
RUN --mount=type=cache,id=ck3,target=/c mkdir -p /c/sub && touch /c/sub/in
RUN --mount=type=cache,id=ck3,source=sub,target=/m,uid=9 touch /m/more && ls /m > /l-sub
D
