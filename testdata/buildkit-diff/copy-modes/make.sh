# COPY --chmod on files, directories and globs (directories too get the mode,
# the target directory a directory copy makes stays 0755), --chmod with
# --chown, ADD --chmod, globs matching nothing beside ones that match, modes the
# context has (600, 700, 751, 4755) kept without --chmod. (Special bits in
# --chmod, and --chmod on a destination named with a trailing slash, differ
# between BuildKit versions: see README.)
mkdir -p dir/sub emptydir
echo a > a.sh; echo b > b.sh; echo x > dir/x; echo y > dir/sub/y
chmod 600 a.sh; chmod 4755 b.sh; chmod 700 dir/sub; chmod 751 emptydir
cat > Dockerfile <<'D'
FROM busybox
COPY --chmod=755 a*.sh /g/
COPY --chmod=640 dir /d640
COPY --chmod=0711 a.sh /x711
COPY nomatch* /nothing/
COPY nomatch* a.sh /some/
COPY --chmod=1777 emptydir /sticky
COPY --chmod=0400 --chown=1:2 dir /both
ADD --chmod=751 dir /added
COPY a.sh b.sh emptydir /keep/
COPY --chown=3:3 emptydir /ed
COPY --chmod=600 dir/ /d600slash
D
