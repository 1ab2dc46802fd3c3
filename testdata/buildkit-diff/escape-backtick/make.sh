# The escape directive set to a backtick: continuation lines with it, backslashes
# kept literally in RUN, ENV and LABEL, an escaped dollar and space, JSON forms
# with backslashes; a directive after the first instruction is only a comment.
# (A source name with a backslash is a glob escape in BuildKit: not used here.)
echo c > c.txt
cat > Dockerfile <<'D'
# escape=`

FROM busybox
ENV W=C:\dir\sub V=`$W X=a`b
RUN echo "$W|$V|$X" > /e1 && `
    echo cont `
    >> /e1
RUN echo back\slash\\double > /e2
RUN ["sh", "-c", "echo 'json\\back' > /e4"]
COPY ["c.txt", "/json-dir/"]
COPY c.txt /plain`
dir/
LABEL path=C:\Program` Files\x
# escape=\
RUN echo after \ > /e3
D
