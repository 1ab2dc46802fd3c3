# syntax=docker/dockerfile:1
FROM debian:bookworm
RUN <<EOF
apt-get update
apt-get install -y python3
EOF
RUN <<-EOT bash
	set -e
	echo "tabs are stripped: $HOME"
	EOT
RUN python3 <<'PY'
print("no $expansion here")
PY
RUN cat <<A >/a && cat <<"B" >/b
first $x
A
second $x
B
COPY <<EOF /etc/motd
Welcome to $HOSTNAME
EOF
COPY --chmod=755 <<-"SCRIPT" /usr/local/bin/hello
	#!/bin/sh
	echo hello
	SCRIPT
ADD <<EOF /config.ini
[main]
key = value
EOF
