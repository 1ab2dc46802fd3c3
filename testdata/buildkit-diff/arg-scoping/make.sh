# Meta ARGs before FROM (used in FROM, invisible in stages unless re-declared),
# re-declared without a value, overridden by --build-arg, ARG shadowed by ENV,
# defaults referring to other ARGs, ARGs never in the config, ARG scope ending
# at the stage's end, build args given for ARGs never declared.
cat > Dockerfile <<'D'
ARG IMG=busybox
ARG META=meta-default
ARG OVER=meta-over
ARG UNUSED
FROM ${IMG} AS first
RUN echo "[$META][$OVER][$IMG]" > /no-redeclare
ARG META
ARG OVER
ARG IMG
RUN echo "[$META][$OVER][$IMG]" > /redeclared
ARG LOCAL=local-$META
ARG CHAIN=${LOCAL}-x
ENV LOCAL=env-wins
RUN echo "[$LOCAL][$CHAIN]" > /chain
ARG EMPTY=
ARG NOVAL
RUN echo "[${EMPTY-unset}][${NOVAL-unset}][${EMPTY:-empty}]" > /empties
ARG CLI
RUN echo "[$CLI]" > /cli
FROM first
RUN echo "[$LOCAL][$CHAIN][$META][$CLI]" > /second
ARG CLI=stage-default
ARG META=second-default
RUN echo "[$CLI][$META]" > /second2
ENV FROMARG=$CLI
WORKDIR /w-$META
LABEL l=$CLI
D
