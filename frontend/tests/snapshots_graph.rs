//! Rendered build graphs, for review.

mod common;

use std::fmt::Write as _;

use common::{opts, plan_with};
use rbuild_frontend::BuildPlan;

/// One line per vertex: id, description, location, inputs, then the op as JSON.
fn render(p: &BuildPlan) -> String {
    let mut out = String::new();
    for (id, v) in p.graph.to_serializable() {
        let loc = v
            .description
            .location
            .as_ref()
            .map(|l| format!(" @{}:{}", l.file, l.start_line))
            .unwrap_or_default();
        let inputs: Vec<String> = v.inputs.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "{id} {:?}{loc} inputs=[{}]{}",
            v.description.name,
            inputs.join(" "),
            if v.ignore_cache { " ignore_cache" } else { "" }
        );
        let _ = writeln!(out, "    {}", serde_json::to_string(&v.op).unwrap());
    }
    let _ = writeln!(out, "target {}", p.target);
    let layers: Vec<String> = p.layer_vertices.iter().map(ToString::to_string).collect();
    let _ = writeln!(out, "layers [{}]", layers.join(" "));
    out
}

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
    insta::assert_snapshot!(render(&p));
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
    insta::assert_snapshot!(render(&p));
}
