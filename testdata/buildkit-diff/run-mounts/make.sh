# RUN --mount: bind (default source, a file, a directory, read-write whose
# writes vanish), tmpfs, cache with ids, uid/gid/mode, a bind from another stage;
# what the mount points leave in the image (stubs) and what writes beside them keep.
# (How cache mounts are keyed: cache-mount-keys.)
mkdir -p src/sub; echo s > src/s; echo u > src/sub/u; echo top > top.txt
cat > Dockerfile <<'D'
FROM busybox AS other
RUN mkdir /out && echo other > /out/o
FROM busybox
RUN mkdir -p /existing && echo e > /existing/e
RUN --mount=type=bind,source=src,target=/existing cat /existing/s > /from-bind && ls /existing > /ls-bind
RUN --mount=type=bind,target=/ctx ls /ctx | sort > /ctx-list
RUN --mount=type=bind,source=src,target=/rw,rw echo w > /rw/new && rm /rw/s && ls /rw > /ls-rw
RUN --mount=type=bind,from=other,source=/out,target=/deep/mnt/point cat /deep/mnt/point/o > /from-stage
RUN --mount=type=tmpfs,target=/var/tmp/t echo t > /var/tmp/t/x && echo kept > /var/tmp/beside
RUN --mount=type=cache,id=c1,target=/c1,uid=5,gid=6,mode=0700 stat -c '%u:%g:%a' /c1 > /cache-stat && echo 1 > /c1/one
RUN --mount=type=cache,id=c1,target=/elsewhere,uid=5,gid=6,mode=0700 ls /elsewhere > /cache-seen
RUN --mount=type=bind,source=top.txt,target=/etc/top.txt cat /etc/top.txt > /top-copy
RUN --mount=type=bind,source=top.txt,target=/newdir/file.txt true
D
