# EXPOSE with protocols, upper case, duplicates and port ranges; VOLUME in JSON
# and plain forms, several at once, duplicates; STOPSIGNAL by number and name;
# MAINTAINER after LABEL; all merged with what the base stage set.
cat > Dockerfile <<'D'
FROM busybox AS base
EXPOSE 80 80/tcp 443/TCP
VOLUME /base
FROM base
EXPOSE 53/udp 53/tcp 7000-7002 9000-9001/udp
EXPOSE 80
VOLUME ["/v1", "/v2"] 
VOLUME /v3 /v4
VOLUME /v1
VOLUME ["/with space"]
STOPSIGNAL SIGKILL
STOPSIGNAL 15
LABEL maintainer=first
MAINTAINER Someone <s@example.com>
D
