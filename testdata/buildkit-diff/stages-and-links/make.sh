# Stages by index and name, an image as a source, FROM scratch, ARG scoping,
# sticky and dangling things, a COPY through a symlinked directory.
echo x > x
cat > Dockerfile <<'D'
ARG BASE=busybox
FROM ${BASE} AS one
ARG U=7
RUN mkdir -p /o && echo one > /o/f && ln -s f /o/l && mkdir /o/emptydir && chmod 1777 /o/emptydir
FROM one AS two
RUN rm /o/f && echo two > /o/g
FROM scratch AS three
COPY --from=0 /o /o0
COPY --from=two /o /o2
COPY --from=busybox /bin/busybox /bin/bb
FROM busybox
ARG U=5
COPY --from=three / /three/
COPY --chown=${U}:${U} x /x
COPY --from=one /o/l /lnk
COPY --from=one /o/emptydir /ed
RUN ln -s /nonexistent /dangling && mkdir -p /a/b && ln -s /a /alink
COPY x /alink/b/
D
