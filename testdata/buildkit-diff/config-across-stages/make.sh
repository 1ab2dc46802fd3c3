# CMD/ENTRYPOINT/SHELL/HEALTHCHECK/USER/WORKDIR/ENV/LABEL passed from a stage to
# the stage built on it; ENTRYPOINT resetting the inherited CMD, CMD [] and
# ENTRYPOINT [] clearing, SHELL shaping RUN, CMD, ENTRYPOINT and HEALTHCHECK.
cat > Dockerfile <<'D'
FROM busybox AS parent
ENV P=1
LABEL from=parent
CMD ["parent-cmd"]
ENTRYPOINT ["/bin/parent"]
HEALTHCHECK --interval=10s --timeout=2s --start-period=3s --retries=4 CMD check || exit 1
SHELL ["/bin/sh", "-xc"]
USER daemon
WORKDIR /pw
STOPSIGNAL 9
FROM parent AS child
USER root
RUN echo "$P" > /shell-x 2>/dev/null
ENTRYPOINT echo child entry
FROM child AS grandchild
CMD echo gc cmd
HEALTHCHECK --retries=2 CMD ["/bin/true", "a b"]
FROM grandchild AS cleared
SHELL ["/bin/sh", "-c"]
ENTRYPOINT []
CMD []
FROM grandchild
LABEL from=final other=x
SHELL ["/bin/ash", "-e", "-c"]
CMD run with ash
D
