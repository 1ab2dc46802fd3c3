# --chown by name and id, --chmod, ADD of an archive and of a file, copies into
# and over what the image has, WORKDIR on an existing directory, whiteouts.
mkdir -p src/a/b asdir/x sub
echo 1 > src/a/b/f; chmod 600 src/a/b/f; echo 2 > src/top; echo filex > asfile
echo inner > asdir/x/y; echo x > sub/x; echo y > y
tar czf arch.tgz src
cat > Dockerfile <<'D'
FROM busybox
RUN mkdir -p /app/x && echo old > /app/x/y && mkdir /repl && mkdir -p /repl/asfile/sub && \
    echo "grp:x:1500:" >> /etc/group && echo "usr:x:1400:1500::/home:/bin/sh" >> /etc/passwd && \
    mkdir -p /data/keep /data/gone && echo k > /data/keep/k && echo g > /data/gone/g && \
    chown -R 1400:1500 /data && chmod 700 /data
COPY --chown=usr:grp src /owned/
COPY --chown=1400 src /owned2
COPY --chmod=640 src /moded
ADD arch.tgz /ext/
ADD --chmod=600 asfile /added
COPY asdir /app/
COPY asfile /repl/asfile
USER usr
WORKDIR /home/usr/work
COPY sub /data/
COPY --chown=usr y /home/usr/work/
USER root
RUN rm -rf /app/x/y /data/gone && mkdir /data/gone && echo new > /data/gone/n && rm /bin/ls
WORKDIR /data/keep
COPY y .
COPY src/a /app/x/
D
