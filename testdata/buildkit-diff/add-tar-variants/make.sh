# ADD of tars in every compression (gz, bz2, xz, none, and a .tar.gz name on
# an uncompressed tar), archives with owners, modes, symlinks, hard links and
# empty directories, an archive extracted over an existing directory, ADD into a
# path without a trailing slash, compressed files that are not tars. (zstd tars
# and ADD --chown of an archive differ between BuildKit versions: see README.)
mkdir -p t/dir/empty t/dir/sub
echo one > t/dir/one; echo two > t/dir/sub/two; chmod 4750 t/dir/one; chmod 700 t/dir/sub
ln -s one t/dir/sym; ln t/dir/one t/dir/hard
tar --owner=123 --group=456 --numeric-owner -C t -cf plain.tar dir
cp plain.tar fake.tar.gz; cp plain.tar noext
gzip -c plain.tar > a.tar.gz; bzip2 -c plain.tar > a.tar.bz2; xz -c plain.tar > a.tar.xz
echo just text | gzip > text.gz; echo just text | bzip2 > text.bz2; echo just text | xz > text.xz
echo not a tar > fake.tar
cat > Dockerfile <<'D'
FROM busybox
RUN mkdir -p /over/dir && echo old > /over/dir/one && echo keep > /over/dir/keep
ADD a.tar.gz /gz/
ADD a.tar.bz2 /bz2
ADD a.tar.xz /xz/
ADD plain.tar fake.tar.gz noext /multi/
ADD plain.tar /over/
ADD text.gz text.bz2 text.xz fake.tar /nontar/
ADD --chown=7:8 text.gz /chowned/
ADD text.gz /single-file
D
