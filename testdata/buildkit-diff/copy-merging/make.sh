# Several sources into one destination, later ones winning; hard links, symlinks,
# a .dockerignore re-inclusion below an excluded file's directory.
mkdir -p d1/sub d2/sub d3/deep/er etc-add/newdir tree
echo a > d1/sub/x; echo b > d2/sub/x; echo only1 > d1/sub/o1; echo only2 > d2/sub/o2
echo deep > d3/deep/er/f; chmod 750 d3/deep
echo p > etc-add/passwd2; echo n > etc-add/newdir/n
echo t > tree/t1; ln tree/t1 tree/t2; ln -s t1 tree/s1; ln -s ../d1 tree/dirlink
printf 'd3/deep/er/f\n!d3/deep/er\n' > .dockerignore
cat > Dockerfile <<'D'
FROM busybox AS st
RUN mkdir -p /out/a/b && echo from-stage > /out/a/b/c && ln -s c /out/a/b/l
FROM busybox
COPY d* /merged/
COPY d1 d2 /two/
COPY d1/sub d2/sub /subs
COPY etc-add/ /etc/
COPY tree /tree
COPY tree/ /usr/
COPY --from=st /out /fromstage
COPY --from=st /out/a /etc/
WORKDIR /w
COPY d3 .
D
