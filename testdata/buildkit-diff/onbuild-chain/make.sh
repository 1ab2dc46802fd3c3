# ONBUILD in a base image: triggers run in the first child only (not in a
# grandchild), in order, before the child's own instructions; ONBUILD with
# ARG/ENV/WORKDIR/COPY; the child's config has no OnBuild; a child stage's own
# ONBUILD is kept in its config.
mkdir -p app; echo a > app/a; echo trig > t.txt
cat > Dockerfile.base <<'D'
FROM busybox
ENV BASEENV=base
ONBUILD WORKDIR /onb
ONBUILD COPY t.txt ./
ONBUILD RUN echo "$BASEENV $(pwd)" > /onb/ran && echo 1 >> /count
ONBUILD ENV FROM_TRIGGER=yes
D
cat > Dockerfile.mid <<'D'
FROM onb-base
RUN cat /count > /mid-count
ONBUILD LABEL from=mid-trigger
D
cat > Dockerfile <<'D'
FROM onb-mid AS grand
RUN echo "[$FROM_TRIGGER]" > /grand && cat /count > /grand-count
FROM onb-base AS direct
COPY app /app
FROM grand
COPY --from=direct /onb /direct-onb
D
