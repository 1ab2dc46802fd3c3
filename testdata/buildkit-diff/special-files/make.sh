# What RUN makes that is not a plain file: fifos, setuid/setgid/sticky bits,
# hard links inside and across directories, mode 000, empty directories,
# long symlink targets, a chmod and chown of a base file without changing it,
# a file replaced by a symlink and a symlink by a directory.
cat > Dockerfile <<'D'
FROM busybox
RUN mkdir -p /s/empty /s/a /s/b && mkfifo -m 640 /s/fifo && \
    echo x > /s/a/f && ln /s/a/f /s/b/hard && ln /s/a/f /s/a/hard2 && \
    echo u > /s/suid && chmod 4755 /s/suid && echo g > /s/sgid && chmod 2755 /s/sgid && \
    mkdir /s/stickyd && chmod 1733 /s/stickyd && echo z > /s/zero && chmod 000 /s/zero && \
    ln -s $(printf 'x%.0s' $(seq 1 150)) /s/longlink && chown 12:34 /s/empty
RUN chmod 600 /etc/group && chown 5:5 /etc/passwd && touch /bin/busybox
RUN rm /s/suid && ln -s /s/sgid /s/suid && rm /s/longlink && mkdir /s/longlink && \
    chmod 700 /s/b && chown -h 9:9 /s/suid
D
