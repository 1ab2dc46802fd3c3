# Names with spaces and non-ASCII letters, paths over 100 bytes (PAX), an empty
# file, and a .dockerignore with ** and a re-inclusion, ignoring the Dockerfile.
L=dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd
mkdir -p "sp ace/ünï" "$L/sub" node_modules/pkg keep
echo s > "sp ace/ünï/f i"; echo l > "$L/sub/$L.txt"; : > empty; echo m > node_modules/pkg/m
echo k > keep/k; echo secret > keep/.env; echo ex > keep/.env.example
printf 'node_modules\n**/.env\nDockerfile\n.dockerignore\n!keep/.env.example\n' > .dockerignore
cat > Dockerfile <<'D'
FROM busybox
COPY . /ctx/
RUN find /ctx | sort > /list
D
