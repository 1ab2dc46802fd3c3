# Globs over files and directories, symlinked sources, archives in several
# compressions, a gzip file that is not a tar, relative destinations.
mkdir -p dir1/s dir2 real
echo a > a.txt; echo b > b.txt; echo s > dir1/s/f; echo d2 > dir2/g; echo r > real/r
ln -s a.txt link-a; ln -s real link-dir
echo plain | gzip > plain.gz; tar cJf t.txz dir2; tar cjf t.tbz dir1
cat > Dockerfile <<'D'
FROM busybox
WORKDIR /w
COPY *.txt dir* ./globbed/
COPY link-a /la
COPY link-dir /ld
COPY link-dir/ /ld2/
COPY link-a link-dir /both/
ADD plain.gz /gz/
ADD t.txz /xz/
ADD t.tbz t.txz /multi/
COPY --chown=1:2 dir1 /chowned
ENV D=/envdir
COPY a.txt $D/
WORKDIR sub
COPY b.txt rel/
COPY b.txt .
D
