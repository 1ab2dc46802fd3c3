//! Any Dockerfile the parser accepts plans to a graph or a clean error.

mod common;

use common::{busybox_config, opts};
use proptest::prelude::*;
use rbuild_frontend::{
    ImagePin, ImageResolver, Platform, ResolveError, ResolvedImage, plan_source,
};

/// Every name is an image (a busybox, or an empty one for names with a digit).
struct AnyResolver;

impl ImageResolver for AnyResolver {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<ResolvedImage, ResolveError> {
        if reference.contains('/') && reference.contains("..") {
            return Err(ResolveError(format!("invalid reference {reference}")));
        }
        let mut config = busybox_config();
        if reference.chars().any(|c| c.is_ascii_digit()) {
            config.rootfs.diff_ids.clear();
            config.history.clear();
            config.config.on_build = vec![
                "RUN from-onbuild".to_owned(),
                "COPY --from=s0 /a /b".to_owned(),
            ];
        }
        Ok(ResolvedImage {
            reference: reference.to_owned(),
            pin: ImagePin::ImageId(format!("sha256:{:064x}", reference.len())),
            config,
        })
    }
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("$X".to_owned()),
        Just("${X:-d}".to_owned()),
        Just("${Y:?}".to_owned()),
        Just("../up".to_owned()),
        Just("/abs/".to_owned()),
        Just("*.txt".to_owned()),
        Just("\"q w\"".to_owned()),
        Just("0".to_owned()),
        Just("s1".to_owned()),
        Just("busybox".to_owned()),
        Just("scratch".to_owned()),
        Just("80/tcp".to_owned()),
        Just("http://h/f".to_owned()),
        "[a-z]{1,3}",
    ]
}

fn line() -> impl Strategy<Value = String> {
    (0..24usize, word(), word(), word()).prop_map(|(k, a, b, c)| match k {
        0 => format!("FROM {a}"),
        1 => format!("FROM {a} AS s{}", b.len() % 3),
        2 => format!("ARG X={a}"),
        3 => format!("ENV {a}={b}")
            .replace("${", "${")
            .replace("=$", "=v$"),
        4 => format!("RUN echo {a} {b}"),
        5 => format!("COPY {a} {b}"),
        6 => format!("COPY --from={a} {b} {c}"),
        7 => format!("ADD {a} {b}"),
        8 => format!("WORKDIR {a}"),
        9 => format!("USER {a}"),
        10 => format!("EXPOSE {a}"),
        11 => format!("VOLUME {a}"),
        12 => format!("LABEL k={a}"),
        13 => format!("CMD {a}"),
        14 => format!("ENTRYPOINT [\"{a}\"]"),
        15 => format!("ONBUILD RUN {a}"),
        16 => format!("STOPSIGNAL {a}"),
        17 => format!("RUN --mount=type=bind,from={a},target=/m true"),
        18 => format!("RUN --mount=type=cache,target={a} true"),
        19 => format!("COPY --chmod={a} x y"),
        20 => format!("COPY <<EOF {a}\n{b}\nEOF"),
        21 => format!("RUN <<EOF\n{a}\nEOF"),
        22 => format!("HEALTHCHECK CMD {a}"),
        _ => format!("SHELL [\"{a}\", \"-c\"]"),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn planning_never_panics(lines in proptest::collection::vec(line(), 1..12), target in proptest::option::weighted(0.3, "s[0-3]")) {
        let src = format!("FROM busybox AS s0\n{}\n", lines.join("\n"));
        if rbuild_parser::parse(&src).is_ok() {
            let mut o = opts();
            o.target = target;
            match plan_source(&src, &o, &AnyResolver) {
                Ok(p) => {
                    prop_assert!(p.graph.get(p.target).is_some());
                    let new = p.image.history.iter().filter(|h| h.comment.as_deref() == Some("buildkit.dockerfile.v0") && !h.empty_layer).count();
                    prop_assert_eq!(new, p.layer_vertices.len());
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
