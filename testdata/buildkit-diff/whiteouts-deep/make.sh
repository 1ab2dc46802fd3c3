# Removing and replacing what lower layers have: a base directory removed and
# made a file, a file made a directory, a directory emptied and refilled
# (opaque), a base file renamed, deep removal in several layers, a removed
# then re-added path, changes inside /etc and /bin.
cat > Dockerfile <<'D'
FROM busybox
RUN mkdir -p /t/d1/x /t/d2/y /t/d3 && echo 1 > /t/d1/x/f && echo 2 > /t/d2/y/g && \
    echo 3 > /t/file && echo 4 > /t/d3/h && echo 5 > /t/d3/i
RUN rm -rf /t/d1 && echo now-a-file > /t/d1 && rm /t/file && mkdir -p /t/file/inside
RUN rm -rf /t/d3/* && echo new > /t/d3/j && mv /t/d2 /t/moved
RUN rm -rf /t/moved/y && rm /etc/group && mv /bin/vi /bin/vi2 && rm -rf /var/tmp /home
RUN mkdir /home && echo back > /home/back && echo g > /etc/group && rm -rf /t/d3 && mkdir /t/d3
D
