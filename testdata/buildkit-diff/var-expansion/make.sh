# The Dockerfile's own word expansion (not the shell's): ${a:-b} ${a:+b} (the
# built-in frontend of BuildKit 0.8 has no ${a-b} ${a+b} yet), escaped dollars, braces inside quotes, in ENV, LABEL, WORKDIR, COPY,
# USER, EXPOSE, VOLUME and STOPSIGNAL; exec-form RUN is not expanded.
echo f > f.txt
cat > Dockerfile <<'D'
FROM busybox
ENV SET=value EMPTY= DIR=/dst NAME=f.txt PORT=8080 SIG=SIGUSR1
ENV A1=${SET:-def} A2=${EMPTY:-def} A3=${UNSET:-def}
ENV B1=${SET:+alt} B2=${EMPTY:+alt} B3=${UNSET:+alt}
ENV C1=\$SET C2='$SET' C3="$SET" C4="\$SET" C5=$SET$SET C6=${SET}x C7=$SET-x C8="${SET:-a b}"
ENV D1=${UNSET:-$SET} D2=${SET:+$DIR/sub} D3="${UNSET:-quoted default}"
LABEL "k-$SET"="v-${SET}" other='$SET'
WORKDIR $DIR/${SET}
COPY $NAME ${DIR}/copied-$SET
COPY ["$NAME", "$DIR/json-$SET"]
EXPOSE $PORT ${PORT}/udp
VOLUME $DIR/vol ["${DIR}/jvol"]
STOPSIGNAL $SIG
RUN ["sh", "-c", "echo $SET > /exec-shell"]
RUN ["echo", "$SET"]
RUN echo "$A1|$A2|$A3|$B1|$B2|$B3|$C1|$C2|$C3|$C4|$C5|$C6|$C7|$C8|$D1|$D2|$D3" > /all
USER ${UNSET:-daemon}
D
