# Dockerfiles BuildKit rejects, each on its own: rbuild must fail on every one.
w() { cat > "Dockerfile.$1"; }
echo x > x
w copy-from-undefined <<'D'
FROM busybox
COPY --from=nosuchstage /x /x
D
w bad-flag <<'D'
FROM busybox
COPY --chwon=1 x /x
D
w no-from <<'D'
RUN true
FROM busybox
D
w from-empty-arg <<'D'
ARG IMG
FROM $IMG
D
w unknown-user <<'D'
FROM busybox
USER nosuchuser
RUN true
D
w env-no-value <<'D'
FROM busybox
ENV ONLYKEY
D
w healthcheck-bad-duration <<'D'
FROM busybox
HEALTHCHECK --interval=5 CMD true
D
w mount-bad-type <<'D'
FROM busybox
RUN --mount=type=nosuch,target=/x true
D
w copy-outside-context <<'D'
FROM busybox
COPY ../outside /x
D
w empty <<'D'
# only a comment
D
w stage-self <<'D'
FROM busybox AS a
FROM a AS b
COPY --from=b /x /y
D
w run-missing-binary <<'D'
FROM busybox
RUN ["/no/such/binary"]
D
w healthcheck-cmd-shell <<'D'
FROM busybox
HEALTHCHECK CMD-SHELL true
D
w env-split-quote <<'D'
FROM busybox
ENV D3="${UNSET:-"quoted default"}"
D
w arg-unterminated-brace <<'D'
FROM busybox
ARG A=x
ENV B=${A
D
w workdir-over-file <<'D'
FROM busybox
WORKDIR /etc/passwd
RUN true
D
w label-no-value <<'D'
FROM busybox
LABEL keyonly
D
w expose-bad-port <<'D'
FROM busybox
EXPOSE 80/xyz
D
