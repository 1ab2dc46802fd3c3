//! Rendered build graphs, for review.

mod common;

use common::{opts, plan_with};

#[test]
fn multi_stage_graph() {
    let p = plan_with(
        "ARG BASE=busybox\n\
         FROM $BASE AS build\n\
         WORKDIR /src\n\
         COPY go.mod main.go ./\n\
         RUN --mount=type=cache,target=/root/.cache build -o /out/app\n\
         FROM busybox AS unused\n\
         RUN never\n\
         FROM scratch\n\
         COPY --from=build --chmod=0755 /out/app /app\n\
         ENTRYPOINT [\"/app\"]\n",
        &opts(),
    );
    insta::assert_snapshot!(p.render());
}

#[test]
fn heredoc_and_add_graph() {
    let p = plan_with(
        "FROM busybox\n\
         ARG V=1\n\
         RUN <<EOF\n\
         echo $V > /v\n\
         EOF\n\
         COPY <<EOF /etc/conf\n\
         v=$V\n\
         EOF\n\
         ADD --checksum=sha256:0123012301230123012301230123012301230123012301230123012301230123 https://example.com/a.tar.gz /dl/\n\
         ADD local.tar.xz /x/\n",
        &opts(),
    );
    insta::assert_snapshot!(p.render());
}
