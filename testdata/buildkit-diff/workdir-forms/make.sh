# WORKDIR absolute, relative chains, .., trailing slashes, through a symlink,
# onto an existing directory with other modes, variables, inheritance into a
# child stage and a reset to /; RUN and COPY relative to it.
echo f > f
cat > Dockerfile <<'D'
FROM busybox AS base
RUN mkdir -m 700 /private && ln -s /real /lnk && mkdir /real
WORKDIR /a/b/
WORKDIR ../c//d/.
RUN pwd > /pwd1
WORKDIR /private
WORKDIR sub
COPY f .
COPY f ../f2
WORKDIR /lnk/inside
RUN pwd > /pwd2
ENV REL=rel
WORKDIR $REL/${REL}2
FROM base
RUN pwd > /pwd3 && touch here
WORKDIR /
RUN pwd > /pwd4
WORKDIR /tmp
COPY f ./
D
