# .dockerignore: ** at the start, middle and end, ! re-including below an
# excluded directory and then excluded again (last rule wins), leading / and ./,
# comments and blank lines, ? and [] classes, a pattern for a directory name only.
mkdir -p a/b/c logs/keep docs/x/y build/out src/.git
for f in a/b/c/x.md a/b/y.md top.md a/b/c/keep.md logs/1.log logs/keep/2.log logs/keep/3.txt \
    docs/x/y/z.txt docs/readme build/out/bin src/.git/config src/main.c src/main.o f1 f2 fa fab; do
    echo "$f" > "$f"; done
cat > .dockerignore <<'I'
# comment
**/*.md
!a/b/c/keep.md

logs
!logs/keep
logs/keep/*.log
/docs/**/y
./build
src/*.o
**/.git
f?
!f1
fa[a-c]
I
cat > Dockerfile <<'D'
FROM busybox
COPY . /ctx/
COPY a /a-only/
D
