# USER by name, name:group, uid:gid, a uid with no passwd entry; what RUN
# creates under each, what WORKDIR creates, COPY without --chown (root) and
# with --chown=user / user:group / uid:gid, names the image does not have
# (root, or the user's group, silently), HOME and ids (and the supplementary
# groups: BuildKit 0.8 adds none for a numeric uid:gid) seen by RUN.
echo f > f; mkdir -p d/s; echo g > d/s/g
cat > Dockerfile <<'D'
FROM busybox
RUN echo 'app:x:1000:1001::/home/app:/bin/sh' >> /etc/passwd && \
    echo 'appg:x:1001:' >> /etc/group && echo 'other:x:1002:' >> /etc/group && \
    echo 'extra:x:1003:app,root' >> /etc/group && \
    mkdir -p /home/app /shared && chown 1000:1001 /home/app && chmod 777 /shared
USER app
RUN id > /shared/id-name && echo $HOME > /shared/home && touch /shared/byname
WORKDIR /shared/wd-app
RUN touch made-here
COPY f /shared/copied-as-app
USER app:other
RUN id > /shared/id-group && touch /shared/bygroup
USER 1234:5678
RUN id > /shared/id-num && touch /shared/bynum && echo $HOME > /shared/home-num
WORKDIR /shared/wd-num
USER 1000
RUN touch /shared/uid-only && id > /shared/id-uid
USER root
RUN id > /shared/id-root
USER 0:0
RUN id > /shared/id-00
USER root
COPY --chown=app f /o-name
COPY --chown=app:other d /o-name-group
COPY --chown=1234:5678 d /o-num/
COPY --chown=2000 f /o-uid-only
COPY --chown=app:1001 f /o-mixed
COPY --chown=nosuch f /o-unknown-user
COPY --chown=app:nosuch f /o-unknown-group
COPY --chown=1234:nosuch f /o-id-unknown-group
COPY --chown=nosuch:other f /o-unknown-known
USER nobody
D
