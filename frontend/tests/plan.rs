//! Behaviour of `build_plan`, one rule per test.
#![allow(clippy::many_single_char_names)] // p(lan), e(xecs), h(istory), r(esolver)

mod common;

use std::fmt::Write as _;

use common::{FakeResolver, busybox_config, opts, plan, plan_with, try_plan};
use rbuild_frontend::{BuildPlan, Entitlements, FrontendError, plan_source};
use rbuild_ops::{
    CachePerms, CacheSharing, Chmod, Chown, ExecOp, FileAction, FileOp, MountKind, NetworkMode,
    SecurityMode, SourceOp, UserRef,
};
use rbuild_ops::{Op, Vertex, VertexId};

fn vertices(p: &BuildPlan) -> Vec<(VertexId, Vertex)> {
    p.graph
        .to_serializable()
        .into_iter()
        .map(|(id, v)| (id, v.clone()))
        .collect()
}

fn execs(p: &BuildPlan) -> Vec<ExecOp> {
    vertices(p)
        .into_iter()
        .filter_map(|(_, v)| match v.op {
            Op::Exec(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn files(p: &BuildPlan) -> Vec<FileOp> {
    vertices(p)
        .into_iter()
        .filter_map(|(_, v)| match v.op {
            Op::File(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn history(p: &BuildPlan) -> Vec<(String, bool)> {
    p.image
        .history
        .iter()
        .skip(1) // the imported base's entry
        .map(|h| (h.created_by.clone().unwrap_or_default(), h.empty_layer))
        .collect()
}

fn context_op(p: &BuildPlan) -> Option<SourceOp> {
    vertices(p).into_iter().find_map(|(_, v)| match v.op {
        Op::Source(s @ SourceOp::Context { .. }) => Some(s),
        _ => None,
    })
}

fn err(src: &str) -> String {
    try_plan(src, &opts()).unwrap_err().to_string()
}

#[test]
fn history_created_by_matches_buildkit() {
    let p = plan(
        "FROM busybox\nARG V=1\nENV A=1 B=\"two words\"\nLABEL x=y\nRUN echo hi\nCOPY a.txt /x\n\
         WORKDIR /w\nUSER nobody\nEXPOSE 80 53/udp\nVOLUME /a /b\nSTOPSIGNAL SIGKILL\n\
         SHELL [\"/bin/bash\", \"-c\"]\nCMD echo $A\nENTRYPOINT [\"/e\"]\nMAINTAINER me\n\
         HEALTHCHECK --interval=5s CMD true\n",
    );
    assert_eq!(
        history(&p),
        vec![
            ("ARG V=1".into(), true),
            ("ENV A=1 B=two words".into(), true),
            ("LABEL x=y".into(), true),
            ("RUN |1 V=1 /bin/sh -c echo hi # buildkit".into(), false),
            ("COPY a.txt /x # buildkit".into(), false),
            ("WORKDIR /w".into(), false),
            ("USER nobody".into(), true),
            ("EXPOSE [80/tcp 53/udp]".into(), true),
            ("VOLUME [/a /b]".into(), true),
            ("STOPSIGNAL SIGKILL".into(), true),
            ("SHELL [/bin/bash -c]".into(), true),
            (r#"CMD ["/bin/bash" "-c" "echo $A"]"#.into(), true),
            (r#"ENTRYPOINT ["/e"]"#.into(), true),
            ("MAINTAINER me".into(), true),
            (
                "HEALTHCHECK {Test:[CMD-SHELL true] Interval:5s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}".into(),
                true
            ),
        ]
    );
    assert!(
        p.image
            .history
            .iter()
            .skip(1)
            .all(|h| h.comment.as_deref() == Some("buildkit.dockerfile.v0"))
    );
}

#[test]
fn layer_vertices_line_up_with_non_empty_history() {
    let p = plan("FROM busybox\nRUN a\nENV X=1\nCOPY a /a\nWORKDIR /w\nWORKDIR /\nRUN b\n");
    let non_empty = history(&p).iter().filter(|(_, e)| !e).count();
    assert_eq!(non_empty, 4);
    assert_eq!(p.layer_vertices.len(), 4);
    assert_eq!(*p.layer_vertices.last().unwrap(), p.target);
    // each layer vertex reads the previous one
    for w in p.layer_vertices.windows(2) {
        let v = p.graph.get(w[1]).unwrap();
        assert_eq!(v.inputs[0], w[0]);
    }
    let first = p.graph.get(p.layer_vertices[0]).unwrap();
    assert!(matches!(
        p.graph.get(first.inputs[0]).unwrap().op,
        Op::Source(SourceOp::Image { .. })
    ));
    assert!(p.base.is_some());
}

#[test]
fn global_args_only_in_from_until_redeclared() {
    let p = plan(
        "ARG TAG=latest\nARG V=global\nFROM busybox:${TAG}\nRUN echo [$V]\nARG V\nRUN echo $V\n",
    );
    let e = execs(&p);
    assert!(!e[0].env.iter().any(|x| x.starts_with("V=")));
    assert!(e[1].env.contains(&"V=global".to_owned()));
    assert!(!e[0].env.iter().any(|x| x.starts_with("TAG=")));
}

#[test]
fn build_args_override_defaults_and_are_not_in_the_config() {
    let mut o = opts();
    o.build_args.insert("V".into(), "over".into());
    o.build_args.insert("UNUSED".into(), "x".into());
    let p = plan_with("FROM busybox\nARG V=def\nARG W=w\nRUN echo\n", &o);
    let e = &execs(&p)[0];
    assert!(e.env.contains(&"V=over".to_owned()));
    assert!(e.env.contains(&"W=w".to_owned()));
    assert!(!p.image.config.env.iter().any(|x| x.starts_with("V=")));
    assert_eq!(p.warnings.len(), 1);
    assert!(p.warnings[0].contains("UNUSED"), "{:?}", p.warnings);
}

#[test]
fn env_overrides_arg_and_references_see_old_values() {
    let p = plan("FROM busybox\nENV A=1\nENV A=2 B=$A\nARG C=x\nENV C=env\nRUN true\n");
    assert!(p.image.config.env.contains(&"B=1".to_owned()));
    assert!(p.image.config.env.contains(&"A=2".to_owned()));
    let e = &execs(&p)[0];
    assert!(e.env.contains(&"C=env".to_owned()));
    assert!(!e.env.contains(&"C=x".to_owned()));
}

#[test]
fn platform_args_are_predefined_globals() {
    let p = plan(
        "FROM busybox\nARG TARGETARCH\nARG BUILDPLATFORM\nARG TARGETOS\nRUN echo $TARGETARCH\n",
    );
    let e = &execs(&p)[0];
    assert!(e.env.contains(&"TARGETARCH=amd64".to_owned()));
    assert!(e.env.contains(&"BUILDPLATFORM=linux/amd64".to_owned()));
    assert!(e.env.contains(&"TARGETOS=linux".to_owned()));
}

#[test]
fn proxy_args_reach_run_only_when_given() {
    let p = plan("FROM busybox\nRUN true\n");
    assert!(!execs(&p)[0].env.iter().any(|e| e.contains("PROXY")));
    let mut o = opts();
    o.build_args
        .insert("HTTP_PROXY".into(), "http://p:3128".into());
    let p = plan_with("FROM busybox\nRUN true\n", &o);
    // Kept apart from `env`: the solver leaves them out of the cache key.
    // Both spellings reach the process (BuildKit's ProxyEnv).
    assert_eq!(
        execs(&p)[0].proxy_env,
        vec![
            "HTTP_PROXY=http://p:3128".to_owned(),
            "http_proxy=http://p:3128".to_owned()
        ]
    );
    assert!(!execs(&p)[0].env.iter().any(|e| e.contains("PROXY")));
    assert!(p.warnings.is_empty());
    // Declared with ARG, it is an ordinary build arg (and part of the key).
    let p = plan_with("FROM busybox\nARG HTTP_PROXY\nRUN true\n", &o);
    let e = &execs(&p)[0];
    assert!(e.env.contains(&"HTTP_PROXY=http://p:3128".to_owned()));
    assert_eq!(e.proxy_env, vec!["http_proxy=http://p:3128".to_owned()]);
}

#[test]
fn run_is_not_expanded_but_gets_user_cwd_and_network() {
    let mut o = opts();
    o.network = NetworkMode::None;
    o.allow.network_host = true;
    let p = plan_with(
        "FROM busybox\nENV X=1\nWORKDIR /app\nUSER 1000:1000\nRUN echo $X\nRUN --network=host [\"a\", \"$X\"]\n",
        &o,
    );
    let e = execs(&p);
    assert_eq!(e[0].args, vec!["/bin/sh", "-c", "echo $X"]);
    assert_eq!(e[0].cwd, "/app");
    assert_eq!(e[0].user, "1000:1000");
    assert_eq!(e[0].network, NetworkMode::None);
    assert_eq!(e[1].args, vec!["a", "$X"]);
    assert_eq!(e[1].network, NetworkMode::Host);
}

/// `BuildKit`'s entitlements: a Dockerfile's `RUN --network=host` needs
/// `network.host` and `RUN --security=insecure` needs `security.insecure`, whatever
/// the build's own `--network`; the error names the line and the `--allow`.
#[test]
fn host_network_and_insecure_runs_need_their_entitlement() {
    let host = "FROM busybox\nRUN true\nRUN --network=host true\n";
    let insecure = "FROM busybox\n\nRUN --security=insecure true\n";
    for network in [NetworkMode::Sandbox, NetworkMode::Host, NetworkMode::None] {
        let mut o = opts();
        o.network = network;
        let e = try_plan(host, &o).unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert_eq!(
            e.to_string(),
            "Dockerfile:3: network.host is not allowed: RUN --network=host needs the \
             entitlement network.host; pass --allow network.host"
        );
        o.allow.security_insecure = true;
        assert!(
            try_plan(host, &o).is_err(),
            "security.insecure is not network.host"
        );
    }
    let e = try_plan(insecure, &opts()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:3: security.insecure is not allowed: RUN --security=insecure needs the \
         entitlement security.insecure; pass --allow security.insecure"
    );
    let mut o = opts();
    o.allow.network_host = true;
    assert!(try_plan(insecure, &o).is_err());
    // A stage the target does not need is not checked (nothing of it runs).
    let unused = "FROM busybox AS unused\nRUN --security=insecure true\nFROM busybox\nRUN true\n";
    try_plan(unused, &opts()).unwrap();

    let mut o = opts();
    o.allow = Entitlements::all();
    let e = execs(&plan_with(host, &o));
    assert_eq!(e[1].network, NetworkMode::Host);
    let e = execs(&plan_with(insecure, &o));
    assert_eq!(e[0].security, SecurityMode::Insecure);
    // The build's own --network=host needs nothing.
    let mut o = opts();
    o.network = NetworkMode::Host;
    let e = execs(&plan_with("FROM busybox\nRUN true\n", &o));
    assert_eq!(e[0].network, NetworkMode::Host);
}

#[test]
fn cmd_entrypoint_reset_rules() {
    let mut r = FakeResolver::new();
    let mut base = busybox_config();
    base.config.cmd = Some(vec!["sh".into()]);
    r.add("withcmd", base);
    let p = plan_source("FROM withcmd\nENTRYPOINT [\"/e\"]\n", &opts(), &r).unwrap();
    assert_eq!(p.image.config.cmd, None);
    let p = plan_source(
        "FROM withcmd\nCMD [\"x\"]\nENTRYPOINT [\"/e\"]\n",
        &opts(),
        &r,
    )
    .unwrap();
    assert_eq!(p.image.config.cmd, Some(vec!["x".to_owned()]));
    let p = plan_source("FROM withcmd\nLABEL a=b\n", &opts(), &r).unwrap();
    assert_eq!(p.image.config.cmd, Some(vec!["sh".to_owned()]));
}

#[test]
fn base_config_is_inherited_and_path_kept() {
    let mut r = FakeResolver::new();
    let mut base = busybox_config();
    base.config.env = vec!["PATH=/custom".into(), "K=v".into()];
    base.config.working_dir = "/srv".into();
    base.config.user = "nobody".into();
    r.add("custom", base);
    let p = plan_source("FROM custom\nRUN pwd\n", &opts(), &r).unwrap();
    assert_eq!(p.image.config.env, vec!["PATH=/custom", "K=v"]);
    let e = &execs(&p)[0];
    assert_eq!(e.cwd, "/srv");
    assert_eq!(e.user, "nobody");
    // no WORKDIR layer for an inherited working dir
    assert!(files(&p).is_empty());
}

#[test]
fn scratch_gets_workdir_root_and_path() {
    let p = plan("FROM scratch\nCOPY hello /\n");
    assert_eq!(p.image.config.working_dir, "/");
    assert!(p.base.is_none());
    assert_eq!(files(&p)[0].base, None);
    assert_eq!(p.image.architecture, "amd64");
}

#[test]
fn unreachable_stages_are_not_resolved() {
    let r = FakeResolver::new();
    let p = plan_source(
        "FROM nonexistent AS unused\nRUN exit 1\nFROM busybox AS build\nRUN make\nFROM busybox\nCOPY --from=build /out /out\n",
        &opts(),
        &r,
    )
    .unwrap();
    assert!(!r.calls.borrow().iter().any(|c| c == "nonexistent"));
    assert!(
        !execs(&p)
            .iter()
            .any(|e| e.args.contains(&"exit 1".to_owned()))
    );
    assert_eq!(execs(&p).len(), 1);
}

#[test]
fn target_selects_a_stage_and_unknown_target_fails() {
    let src = "FROM busybox AS a\nENV S=a\nFROM busybox AS b\nENV S=b\n";
    let mut o = opts();
    o.target = Some("A".into());
    let p = plan_with(src, &o);
    assert!(p.image.config.env.contains(&"S=a".to_owned()));
    assert_eq!(p.target_stage, "a");
    o.target = Some("c".into());
    let e = try_plan(src, &o).unwrap_err();
    assert!(matches!(e, FrontendError::UnknownTarget { .. }), "{e}");
    assert!(e.to_string().contains("\"c\""), "{e}");
}

#[test]
fn unknown_target_suggests_the_closest_stage_name() {
    let src = "FROM busybox AS build\nFROM busybox AS final\n";
    let mut o = opts();
    o.target = Some("BUILT".into());
    let e = try_plan(src, &o).unwrap_err().to_string();
    assert!(e.contains("(did you mean build?)"), "{e}");
    o.target = Some("fnial".into());
    let e = try_plan(src, &o).unwrap_err().to_string();
    assert!(e.contains("(did you mean final?)"), "{e}");
    o.target = Some("unrelated".into());
    let e = try_plan(src, &o).unwrap_err().to_string();
    assert!(!e.contains("did you mean"), "{e}");
}

#[test]
fn copy_from_index_stage_and_image() {
    let mut r = FakeResolver::new();
    r.add("busybox:1", busybox_config());
    let p = plan_source(
        "FROM busybox\nRUN mk\nFROM busybox AS two\nCOPY --from=0 /a /a\nCOPY --from=busybox:1 /bin/sh /sh\n",
        &opts(),
        &r,
    )
    .unwrap();
    let f = files(&p);
    assert_eq!(f.len(), 2);
    let vs = vertices(&p);
    let images: Vec<String> = vs
        .iter()
        .filter_map(|(_, v)| match &v.op {
            Op::Source(SourceOp::Image { reference, .. }) => Some(reference.clone()),
            _ => None,
        })
        .collect();
    assert!(
        images.contains(&"docker.io/library/busybox:1".to_owned()),
        "{images:?}"
    );
}

#[test]
fn from_a_later_stage_errors() {
    let e = err("FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n");
    assert!(e.contains("circular"), "{e}");
    let e = err("FROM busybox\nCOPY --from=3 /x /x\n");
    assert!(e.contains("invalid stage index 3"), "{e}");
    let e = err("FROM busybox\nCOPY --from=$X /x /x\n");
    assert!(e.contains("variable expansion is not supported"), "{e}");
}

#[test]
fn errors_name_file_and_line() {
    let mut o = opts();
    o.dockerfile_path = "ctx/Dockerfile".into();
    let e = try_plan("FROM busybox\n\nCOPY --chmod=999 a /b\n", &o).unwrap_err();
    assert_eq!(e.line(), Some(3));
    let s = e.to_string();
    assert!(s.starts_with("ctx/Dockerfile:3:"), "{s}");
    assert!(s.contains("invalid chmod parameter: '999'"), "{s}");
    let e = try_plan("FROM busybox\nENV A=${NOPE:?required}\n", &o).unwrap_err();
    assert!(e.to_string().contains("NOPE: required"), "{e}");
    assert_eq!(e.line(), Some(2));
    let e = err("FROM busybox\nCOPY ../secret /x\n");
    assert!(
        e.contains("\"../secret\"") && e.contains("outside the build context"),
        "{e}"
    );
    let e = err("FROM busybox\nEXPOSE 80/xyz\n");
    assert!(e.contains("invalid proto"), "{e}");
    let e = err("FROM busybox\nEXPOSE notaport\n");
    assert!(e.contains("invalid containerPort"), "{e}");
    let e = err("FROM missing-image\n");
    assert!(e.contains("missing-image"), "{e}");
    let e = err("FROM busybox\nSTOPSIGNAL SIGNOPE\n");
    assert!(e.contains("Invalid signal"), "{e}");
    let e = err("ENV A=1\nFROM busybox\n");
    assert!(e.contains("no build stage"), "{e}");
}

#[test]
fn copy_paths_dest_rules_and_context_selection() {
    let p = plan(
        "FROM busybox\nWORKDIR /w\nCOPY a.txt rel.txt\nCOPY a.txt ./reldir/\nCOPY hom* b/c.txt /multi/\n",
    );
    let f = files(&p);
    let copies: Vec<_> = f
        .iter()
        .flat_map(|f| f.actions.iter())
        .filter_map(|a| match a {
            FileAction::Copy(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(copies[0].dest, "/w/rel.txt");
    assert_eq!(copies[0].src_paths, vec!["/a.txt"]);
    assert_eq!(copies[1].dest, "/w/reldir/");
    assert_eq!(copies[2].src_paths, vec!["/hom*"]);
    assert_eq!(copies[3].src_paths, vec!["/b/c.txt"]);
    assert!(
        copies
            .iter()
            .all(|c| c.dir_contents_only && c.allow_wildcard)
    );
    let Some(SourceOp::Context {
        include_patterns, ..
    }) = context_op(&p)
    else {
        panic!("no context")
    };
    assert_eq!(include_patterns, vec!["a.txt", "b/c.txt", "hom*"]);
    // COPY . selects everything
    let p = plan("FROM busybox\nCOPY . /ctx\nCOPY a /a\n");
    let Some(SourceOp::Context {
        include_patterns, ..
    }) = context_op(&p)
    else {
        panic!("no context")
    };
    assert!(include_patterns.is_empty());
}

#[test]
fn dockerignore_goes_to_the_context_source() {
    let mut o = opts();
    o.dockerignore = vec!["*.log".into(), "!keep.log".into()];
    let p = plan_with("FROM busybox\nCOPY . /\n", &o);
    let Some(SourceOp::Context {
        exclude_patterns, ..
    }) = context_op(&p)
    else {
        panic!()
    };
    assert_eq!(exclude_patterns, vec!["*.log", "!keep.log"]);
    // no COPY from the context: no context source at all
    let p = plan("FROM busybox\nRUN true\n");
    assert!(context_op(&p).is_none());
}

#[test]
fn chown_chmod_exclude_parents_flags() {
    let p = plan(
        "FROM busybox\nARG U=app\nCOPY --chown=$U:1234 --chmod=0640 --exclude=*.md a /a\nCOPY --chmod=u+x b /b\nCOPY --parents x/./y/*.txt /p/\nCOPY --parents a/./b/./c d/e /q/\n",
    );
    let copies: Vec<_> = files(&p)
        .iter()
        .flat_map(|f| f.actions.clone())
        .filter_map(|a| match a {
            FileAction::Copy(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(
        copies[0].owner,
        Some(Chown {
            user: UserRef::Name("app".into()),
            group: Some(UserRef::Id(1234))
        })
    );
    assert_eq!(copies[0].mode, Some(Chmod::Octal(0o640)));
    assert_eq!(copies[0].exclude_patterns, vec!["*.md"]);
    assert_eq!(copies[1].mode, Some(Chmod::Symbolic("u+x".into())));
    // --parents: the directory before the pivot, the rest as an include
    // pattern; without wildcards the path is required.
    assert_eq!(copies[2].src_paths, vec!["/x"]);
    assert_eq!(copies[2].include_patterns, vec!["y/*.txt"]);
    assert!(copies[2].required_paths.is_empty());
    assert_eq!(copies[3].src_paths, vec!["/a"]);
    assert_eq!(copies[3].include_patterns, vec!["b/c"]);
    assert_eq!(copies[3].required_paths, vec!["/a/b/c"]);
    assert_eq!(copies[4].src_paths, vec!["/"]);
    assert_eq!(copies[4].include_patterns, vec!["d/e"]);
    assert_eq!(copies[4].required_paths, vec!["/d/e"]);
    let h = history(&p);
    assert_eq!(h[1].0, "COPY --chown=app:1234 --chmod=0640 a /a # buildkit");
}

#[test]
fn add_archives_urls_and_checksum() {
    let p = plan(
        "FROM busybox\nADD a.tar.gz /x/\nADD --checksum=sha256:abababababababababababababababababababababababababababababababab https://example.com/f.tgz /y/\nADD --unpack=false b.tar /z/\n",
    );
    let copies: Vec<_> = files(&p)
        .iter()
        .flat_map(|f| f.actions.clone())
        .filter_map(|a| match a {
            FileAction::Copy(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(copies[0].attempt_unpack);
    assert!(!copies[1].attempt_unpack);
    assert_eq!(copies[1].src_paths, vec!["/f.tgz"]);
    assert!(!copies[2].attempt_unpack);
    let http = vertices(&p).into_iter().find_map(|(_, v)| match v.op {
        Op::Source(s @ SourceOp::Http { .. }) => Some(s),
        _ => None,
    });
    assert_eq!(
        http,
        Some(SourceOp::Http {
            url: "https://example.com/f.tgz".into(),
            checksum: Some(
                "sha256:abababababababababababababababababababababababababababababababab".into()
            ),
            filename: Some("f.tgz".into()),
            chmod: None
        })
    );
    assert!(err("FROM busybox\nCOPY https://example.com/x /x\n").contains("URL for COPY"));
    assert!(err("FROM busybox\nADD --checksum=sha256:ab a b /x/\n").contains("multiple sources"));
    assert!(
        err("FROM busybox\nADD --checksum=sha256:ab https://e.com/a /x/\n")
            .contains("invalid checksum")
    );
    // A resolver that reaches no repositories refuses git sources.
    assert!(err("FROM busybox\nADD https://github.com/o/r.git /src\n").contains("git sources"));
}

/// Resolves every git ref to one commit, recording what it was asked.
struct GitResolver(FakeResolver, std::cell::RefCell<Vec<String>>);

impl rbuild_frontend::ImageResolver for GitResolver {
    fn resolve(
        &self,
        reference: &str,
        platform: &rbuild_frontend::Platform,
    ) -> Result<rbuild_frontend::ResolvedImage, rbuild_frontend::ResolveError> {
        self.0.resolve(reference, platform)
    }

    fn resolve_git(
        &self,
        remote: &str,
        reference: &str,
        keep_git_dir: bool,
    ) -> Result<String, rbuild_frontend::ResolveError> {
        self.1
            .borrow_mut()
            .push(format!("{remote} {reference} {keep_git_dir}"));
        Ok("abcdef".repeat(7)[..40].to_owned())
    }
}

#[test]
fn add_of_a_git_ref_is_pinned_to_the_resolved_commit() {
    let r = GitResolver(FakeResolver::new(), std::cell::RefCell::default());
    let commit = "abcdef".repeat(7)[..40].to_owned();
    let p = plan_source(
        "FROM busybox\nADD --keep-git-dir --checksum=abcdef https://h/o/r.git#v1:sub/dir /src\n\
         ADD git@h:o/r.git?submodules=false /r2\n",
        &opts(),
        &r,
    )
    .unwrap();
    let gits: Vec<SourceOp> = vertices(&p)
        .into_iter()
        .filter_map(|(_, v)| match v.op {
            Op::Source(s @ SourceOp::Git { .. }) => Some(s),
            _ => None,
        })
        .collect();
    assert!(gits.contains(&SourceOp::Git {
        remote: "https://h/o/r.git".into(),
        reference: "v1".into(),
        commit: commit.clone(),
        subdir: "sub/dir".into(),
        keep_git_dir: true,
        submodules: true,
    }));
    assert!(gits.contains(&SourceOp::Git {
        remote: "git@h:o/r.git".into(),
        reference: String::new(),
        commit,
        subdir: String::new(),
        keep_git_dir: false,
        submodules: false,
    }));
    assert_eq!(
        *r.1.borrow(),
        vec!["https://h/o/r.git v1 true", "git@h:o/r.git  false"]
    );
    let fails = |src: &str| {
        let r = GitResolver(FakeResolver::new(), std::cell::RefCell::default());
        plan_source(src, &opts(), &r).unwrap_err().to_string()
    };
    assert!(
        fails("FROM busybox\nADD --checksum=0123 https://h/r.git /s\n")
            .contains("expected checksum to match 0123")
    );
    assert!(
        fails("FROM busybox\nADD --checksum=xyz https://h/r.git /s\n")
            .contains("expected hex commit hash")
    );
    assert!(fails("FROM busybox\nCOPY https://h/r.git /s\n").contains("git ref for COPY"));
    assert!(
        fails("FROM busybox\nADD --keep-git-dir https://h/r.git?keep-git-dir=0 /s\n")
            .contains("inconsistent keep-git-dir")
    );
}

#[test]
fn copy_heredocs_become_files_expanded_unless_quoted() {
    let p = plan(
        "FROM busybox\nENV USER=me\nCOPY <<EOF /etc/motd\nWelcome $USER\nEOF\nCOPY <<-\"EOT\" /quoted\n\tno $expansion\n\tEOT\n",
    );
    let mkfiles: Vec<_> = files(&p)
        .iter()
        .flat_map(|f| f.actions.clone())
        .filter_map(|a| match a {
            FileAction::Mkfile(m) => Some(m),
            _ => None,
        })
        .collect();
    let data = |path: &str| {
        let m = mkfiles.iter().find(|m| m.path == path).unwrap();
        String::from_utf8_lossy(&m.data).into_owned()
    };
    assert_eq!(data("/EOF"), "Welcome me\n");
    assert_eq!(data("/EOT"), "no $expansion\n");
    let h = history(&p);
    assert_eq!(h[1].0, "COPY <<EOF /etc/motd # buildkit");
}

#[test]
fn run_heredocs() {
    let p = plan(
        "FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\nRUN <<EOF python3\nprint(1)\nEOF\nRUN <<EOF\n#!/bin/sh\necho x\nEOF\n",
    );
    let e = execs(&p);
    assert_eq!(e[0].args, vec!["/bin/sh", "-c", "echo a\necho b\n"]);
    assert_eq!(
        e[1].args,
        vec!["/bin/sh", "-c", "<<EOF python3\nprint(1)\nEOF"]
    );
    assert_eq!(e[2].args, vec!["/bin/sh", "-c", "/dev/pipes/EOF"]);
    assert!(e[2].mounts.iter().any(|m| m.target == "/dev/pipes/"));
    let names: Vec<String> = vertices(&p)
        .into_iter()
        .filter(|(_, v)| matches!(v.op, Op::Exec(_)))
        .map(|(_, v)| v.description.name)
        .collect();
    assert_eq!(names[0], "[2/4] RUN <<EOF (echo a...)");
}

#[test]
fn ssh_mounts_set_ssh_auth_sock_and_count_targets_per_run() {
    let p = plan(
        "FROM busybox\n\
         RUN --mount=type=ssh,id=a,target=/a.sock --mount=type=ssh true\n\
         RUN --mount=type=ssh --mount=type=ssh,id=b true\n\
         ENV SSH_AUTH_SOCK=/mine\n\
         RUN --mount=type=ssh true\n\
         RUN true\n",
    );
    let e = execs(&p);
    let sock = |e: &ExecOp| {
        e.env
            .iter()
            .filter_map(|v| v.strip_prefix("SSH_AUTH_SOCK="))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let targets = |e: &ExecOp| {
        e.mounts
            .iter()
            .map(|m| m.target.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(targets(&e[0]), ["/a.sock", "/run/buildkit/ssh_agent.1"]);
    assert_eq!(sock(&e[0]), ["/a.sock"]);
    // Each RUN counts its own default targets (BuildKit's exec).
    assert_eq!(
        targets(&e[1]),
        ["/run/buildkit/ssh_agent.0", "/run/buildkit/ssh_agent.1"]
    );
    assert_eq!(sock(&e[1]), ["/run/buildkit/ssh_agent.0"]);
    assert!(
        matches!(&e[1].mounts[1].kind, MountKind::Ssh { id, required: false, mode: 0o600, .. } if id == "b")
    );
    // The step's own SSH_AUTH_SOCK stays; no ssh mount, no SSH_AUTH_SOCK.
    assert_eq!(sock(&e[2]), ["/mine"]);
    assert_eq!(sock(&e[3]), ["/mine"]);
    let p = plan("FROM busybox\nRUN true\n");
    assert!(sock(&execs(&p)[0]).is_empty());
}

#[test]
fn run_mounts() {
    let p = plan(
        "FROM busybox AS dep\nRUN mk\nFROM busybox\nWORKDIR /src\n\
         RUN --mount=type=cache,target=/cache,sharing=locked,uid=5,mode=0700 \
             --mount=type=bind,source=a.txt,target=a \
             --mount=type=bind,from=dep,source=/out,target=/dep,rw \
             --mount=type=tmpfs,target=/t,size=64m \
             --mount=type=secret,id=tok \
             --mount=type=secret,id=e,env=TOKEN \
             --mount=type=ssh true\n",
    );
    let e = execs(&p).pop().unwrap();
    let m = &e.mounts;
    assert_eq!(m[0].target, "/cache");
    assert_eq!(
        m[0].kind,
        MountKind::Cache {
            id: "/cache".into(),
            sharing: CacheSharing::Locked,
            from: None,
            source: "/".into(),
            readonly: false,
            perms: Some(CachePerms::new(5, 0, 0o700)),
        }
    );
    assert_eq!(m[1].target, "/src/a");
    assert!(
        matches!(&m[1].kind, MountKind::Bind { selector, readonly: true, .. } if selector == "/a.txt")
    );
    assert!(matches!(
        &m[2].kind,
        MountKind::Bind {
            readonly: false,
            ..
        }
    ));
    assert_eq!(
        m[3].kind,
        MountKind::Tmpfs {
            size: Some(64 << 20)
        }
    );
    assert_eq!(m[4].target, "/run/secrets/tok");
    assert!(matches!(&m[5].kind, MountKind::Secret { env: Some(v), .. } if v == "TOKEN"));
    assert_eq!(m[5].target, "");
    assert_eq!(m[6].target, "/run/buildkit/ssh_agent.0");
    let Some(SourceOp::Context {
        include_patterns, ..
    }) = context_op(&p)
    else {
        panic!()
    };
    assert_eq!(include_patterns, vec!["a.txt"]);
}

/// What each cache mount of the last RUN of `src` is keyed by: id, `from=`,
/// source and perms.
fn cache_keys(src: &str) -> Vec<(String, bool, String, Option<CachePerms>)> {
    execs(&plan(src))
        .pop()
        .unwrap()
        .mounts
        .into_iter()
        .filter_map(|m| match m.kind {
            MountKind::Cache {
                id,
                from,
                source,
                perms,
                ..
            } => Some((id, from.is_some(), source, perms)),
            _ => None,
        })
        .collect()
}

#[test]
fn cache_mounts_carry_what_buildkit_keys_them_by() {
    let k = cache_keys(
        "FROM busybox AS st\nFROM busybox\nWORKDIR /w\n\
         RUN --mount=type=cache,target=rel/ \
             --mount=type=cache,id=x,target=/a \
             --mount=type=cache,id=x,target=/b,uid=1000 \
             --mount=type=cache,id=x,target=/c,uid=1000,gid=0,mode=0755 \
             --mount=type=cache,id=x,target=/d,mode=01777 \
             --mount=type=cache,id=x,target=/e,source=sub,uid=7 \
             --mount=type=cache,id=x,target=/f,from=st,source=/opt,mode=0700 \
             --mount=type=cache,id=x,target=/g,from=st,gid=3 \
             --mount=type=cache,id=x,target=/h,from=st true\n",
    );
    let p = |uid, gid, mode| Some(CachePerms::new(uid, gid, mode));
    let want =
        |id: &str, from, source: &str, perms| (id.to_owned(), from, source.to_owned(), perms);
    assert_eq!(
        k,
        [
            // The default id is the target as written, not made absolute.
            want("rel", false, "/", None),
            want("x", false, "/", None),
            want("x", false, "/", p(1000, 0, 0o755)),
            want("x", false, "/", p(1000, 0, 0o755)),
            // Only the permission bits (llb.Mkdir's mode & 0777).
            want("x", false, "/", p(0, 0, 0o777)),
            // Beside source=, uid/gid/mode do nothing.
            want("x", false, "/sub", None),
            want("x", true, "/opt", None),
            // From a stage, the perms make its /cache (BuildKit's mkdir).
            want("x", true, "/cache", p(0, 3, 0o755)),
            want("x", true, "/", None),
        ]
    );
}

#[test]
fn onbuild_triggers_run_after_from() {
    let mut r = FakeResolver::new();
    let mut base = busybox_config();
    base.config.on_build = vec!["ADD . /app/src".into(), "RUN echo triggered".into()];
    r.add("onbase", base);
    let p = plan_source("FROM onbase\nRUN cat /app/src/x\n", &opts(), &r).unwrap();
    assert!(p.image.config.on_build.is_empty());
    let h = history(&p);
    assert_eq!(h[0].0, "ADD . /app/src # buildkit");
    assert_eq!(h[1].0, "RUN /bin/sh -c echo triggered # buildkit");
    let names: Vec<String> = vertices(&p)
        .into_iter()
        .map(|(_, v)| v.description.name)
        .collect();
    assert!(
        names.contains(&"[2/4] ONBUILD ADD . /app/src".to_owned()),
        "{names:?}"
    );
    // ONBUILD in a stage is stored, and run by a stage built FROM it
    let p = plan("FROM busybox AS b\nONBUILD RUN hello\nFROM b\nRUN world\n");
    let e = execs(&p);
    assert_eq!(e.len(), 1 + 1);
    assert_eq!(e[0].args[2], "hello");
    let mut o = opts();
    o.target = Some("b".into());
    let p = plan_with(
        "FROM busybox AS b\nONBUILD RUN hello\nFROM b\nRUN world\n",
        &o,
    );
    assert_eq!(p.image.config.on_build, vec!["RUN hello"]);
}

#[test]
fn workdir_is_relative_and_created() {
    let p = plan("FROM busybox\nWORKDIR /a\nWORKDIR b\nUSER app\nWORKDIR c\nWORKDIR /\n");
    assert_eq!(p.image.config.working_dir, "/");
    let mk: Vec<_> = files(&p)
        .into_iter()
        .flat_map(|f| f.actions)
        .filter_map(|a| match a {
            FileAction::Mkdir(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(mk.len(), 3);
    assert_eq!(mk[1].path, "/a/b");
    assert_eq!(mk[2].path, "/a/b/c");
    assert_eq!(
        mk[2].owner,
        Some(Chown {
            user: UserRef::Name("app".into()),
            group: None
        })
    );
    assert!(mk.iter().all(|m| m.make_parents && m.mode == 0o755));
    assert_eq!(history(&p).last().unwrap(), &("WORKDIR /".to_owned(), true));
}

#[test]
fn healthcheck_and_labels_options() {
    let mut o = opts();
    o.labels.insert("from".into(), "cli".into());
    o.labels.insert("a".into(), "cli".into());
    let p = plan_with(
        "FROM busybox\nLABEL a=df b=df\nHEALTHCHECK --interval=1m30s --retries=3 CMD [\"curl\", \"x\"]\n",
        &o,
    );
    let l = &p.image.config.labels;
    assert_eq!(l["a"], "cli");
    assert_eq!(l["b"], "df");
    assert_eq!(l["from"], "cli");
    let hc = p.image.config.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, vec!["CMD", "curl", "x"]);
    assert_eq!(hc.interval, 90_000_000_000);
    assert_eq!(hc.retries, 3);
}

#[test]
fn descriptions_and_locations() {
    let mut o = opts();
    o.dockerfile_path = "Dockerfile".into();
    let p = plan_with(
        "FROM busybox AS build\nRUN echo $HOME\nFROM busybox\nCOPY --from=build /a /a\n",
        &o,
    );
    let mut names: Vec<(String, u32)> = vertices(&p)
        .into_iter()
        .map(|(_, v)| {
            (
                v.description.name,
                v.description.location.map_or(0, |l| l.start_line),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            (
                "[build 1/2] FROM docker.io/library/busybox:latest".to_owned(),
                1
            ),
            ("[build 2/2] RUN echo $HOME".to_owned(), 2),
            ("[stage-1 2/2] COPY --from=build /a /a".to_owned(), 4),
        ]
    );
    // one stage: no stage name; ENV values are shown expanded
    let p = plan("FROM busybox\nENV D=/x\nCOPY a $D\n");
    let names: Vec<String> = vertices(&p)
        .into_iter()
        .map(|(_, v)| v.description.name)
        .collect();
    assert!(names.contains(&"[2/2] COPY a /x".to_owned()), "{names:?}");
}

#[test]
fn no_cache_filter_marks_only_that_stage() {
    let mut o = opts();
    o.no_cache_filter = vec!["build".into()];
    let p = plan_with(
        "FROM busybox AS build\nRUN make\nFROM busybox\nRUN other\nCOPY --from=build /a /a\n",
        &o,
    );
    for (_, v) in vertices(&p) {
        if let Op::Exec(e) = &v.op {
            assert_eq!(
                v.ignore_cache,
                e.args[2] == "make",
                "{}",
                v.description.name
            );
        }
    }
    o.no_cache_filter.clear();
    o.no_cache = true;
    let p = plan_with("FROM busybox\nRUN a\n", &o);
    assert!(vertices(&p).iter().any(|(_, v)| v.ignore_cache));
}

#[test]
fn identical_stages_are_deduplicated() {
    let p = plan(
        "FROM busybox AS a\nRUN same\nFROM busybox AS b\nRUN same\nFROM busybox\nCOPY --from=a /x /x\nCOPY --from=b /y /y\n",
    );
    assert_eq!(execs(&p).len(), 1);
}

#[test]
fn expose_forms() {
    let p = plan("FROM busybox\nARG P=8080\nEXPOSE 80 $P/udp 9000-9001\n");
    let keys: Vec<&String> = p.image.config.exposed_ports.keys().collect();
    assert_eq!(keys, vec!["80/tcp", "8080/udp", "9000/tcp", "9001/tcp"]);
}

#[test]
fn config_json_round_trips_docker_field_names() {
    let p = plan(
        "FROM busybox\nENV A=1\nCMD [\"x\"]\nEXPOSE 80\nVOLUME /v\nSTOPSIGNAL 9\nHEALTHCHECK NONE\n",
    );
    let v = serde_json::to_value(&p.image).unwrap();
    let c = &v["config"];
    assert_eq!(c["Cmd"], serde_json::json!(["x"]));
    assert_eq!(c["ExposedPorts"], serde_json::json!({"80/tcp": {}}));
    assert_eq!(c["Volumes"], serde_json::json!({"/v": {}}));
    assert_eq!(c["StopSignal"], "9");
    assert_eq!(c["Healthcheck"], serde_json::json!({"Test": ["NONE"]}));
    assert_eq!(c["ArgsEscaped"], true);
    assert_eq!(v["architecture"], "amd64");
    assert!(v["history"][1]["empty_layer"].as_bool().unwrap());
    let back: rbuild_frontend::ImageConfig = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), v);
    // unknown fields survive
    let odd: rbuild_frontend::ImageConfig = serde_json::from_str(
        r#"{"architecture":"arm64","os":"linux","docker_version":"24","config":{"Hostname":"h","Env":null}}"#,
    )
    .unwrap();
    let again = serde_json::to_value(&odd).unwrap();
    assert_eq!(again["docker_version"], "24");
    assert_eq!(again["config"]["Hostname"], "h");
}

#[test]
fn source_date_epoch_build_arg_clamps_times() {
    let mut o = opts();
    o.build_args
        .insert("SOURCE_DATE_EPOCH".into(), "1700000000".into());
    let p = plan_with("FROM busybox\nCOPY a /a\nWORKDIR /w\n", &o);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let new: Vec<_> = p.image.history.iter().skip(1).collect();
    assert!(
        new.iter()
            .all(|h| h.created.as_deref() == Some("2023-11-14T22:13:20Z"))
    );
    for f in files(&p) {
        for a in f.actions {
            match a {
                FileAction::Copy(c) => assert_eq!(c.timestamp, Some(1_700_000_000)),
                FileAction::Mkdir(m) => assert_eq!(m.timestamp, Some(1_700_000_000)),
                _ => {}
            }
        }
    }
}

#[test]
fn empty_base_image_is_scratch_and_from_is_not_shown() {
    let mut r = FakeResolver::new();
    let mut empty = busybox_config();
    empty.rootfs.diff_ids.clear();
    empty.history.clear();
    r.add("empty", empty);
    let p = plan_source("FROM empty\nCOPY a /a\n", &opts(), &r).unwrap();
    assert!(
        !vertices(&p)
            .iter()
            .any(|(_, v)| matches!(v.op, Op::Source(SourceOp::Image { .. })))
    );
    assert_eq!(files(&p)[0].base, None);
    let names: Vec<String> = vertices(&p)
        .into_iter()
        .map(|(_, v)| v.description.name)
        .collect();
    assert!(names.contains(&"[1/2] COPY a /a".to_owned()), "{names:?}");
}

#[test]
fn env_order_follows_llb_add_or_replace() {
    let p = plan("FROM busybox\nENV A=1 B=2\nENV A=3\nRUN x\n");
    assert_eq!(execs(&p)[0].env[1..], ["B=2".to_owned(), "A=3".to_owned()]);
    // the config keeps the first position
    assert_eq!(
        p.image.config.env[1..],
        ["A=3".to_owned(), "B=2".to_owned()]
    );
    let e = err("FROM busybox\nRUN --mount=type=tmpfs,target=/ true\n");
    assert!(e.contains("invalid mount target"), "{e}");
}

#[test]
fn copy_from_a_stage_defined_later_errors() {
    let mut o = opts();
    o.target = Some("a".into());
    let e = try_plan(
        "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\n",
        &o,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(
            "cannot copy from stage \"b\", it needs to be defined before current stage \"a\""
        ),
        "{e}"
    );
}

#[test]
fn which_instructions_expand_variables() {
    let mut r = FakeResolver::new();
    r.add("busybox:amd64", busybox_config());
    let p = plan_source(
        "FROM busybox:$TARGETARCH\nENV V=x U=app S=SIGINT\nLABEL l=$V\nVOLUME /$V\nUSER $U\n\
         STOPSIGNAL $S\nCMD echo $V\nENTRYPOINT [\"$V\"]\nSHELL [\"$V\", \"-c\"]\nONBUILD RUN echo $V\n",
        &opts(),
        &r,
    )
    .unwrap();
    assert!(r.calls.borrow().contains(&"busybox:amd64".to_owned()));
    let c = &p.image.config;
    assert_eq!(c.labels["l"], "x");
    assert!(c.volumes.contains_key("/x"));
    assert_eq!(c.user, "app");
    assert_eq!(c.stop_signal, "SIGINT");
    assert_eq!(
        c.cmd.as_deref(),
        Some(&["/bin/sh".to_owned(), "-c".into(), "echo $V".into()][..])
    );
    assert_eq!(c.entrypoint.as_deref(), Some(&["$V".to_owned()][..]));
    assert_eq!(c.shell, vec!["$V", "-c"]);
    assert_eq!(c.on_build, vec!["RUN echo $V"]);
}

#[test]
fn references_in_one_label_see_old_values() {
    let p = plan("FROM busybox\nENV A=old\nLABEL A=$A\nENV A=new B=$A\n");
    assert_eq!(p.image.config.labels["A"], "old");
    assert!(p.image.config.env.contains(&"B=old".to_owned()));
}

#[test]
fn empty_exec_form_run_is_an_error() {
    let e = err("FROM busybox\nRUN []\n");
    assert!(e.contains("Dockerfile:2"), "{e}");
}

/// `ARG A0=<1 KiB>` then `ARG A{i}=${A{i-1}}${A{i-1}}`: the doubling that fills memory.
fn doubling(lines: usize) -> String {
    let mut src = format!("FROM busybox\nARG A0={}\n", "x".repeat(1024));
    for i in 1..=lines {
        let _ = writeln!(src, "ARG A{i}=${{A{}}}${{A{}}}", i - 1, i - 1);
    }
    src
}

#[test]
fn an_expansion_over_one_mebibyte_is_an_error_at_its_line_and_column() {
    let mut o = opts();
    o.dockerfile_path = "Dockerfile".into();
    let t = std::time::Instant::now();
    let e = try_plan(&doubling(20), &o).unwrap_err();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(60),
        "hang guard"
    );
    // 1 KiB doubled ten times is exactly 1 MiB (A10, line 12); A11 is over.
    let FrontendError::Expansion { span, .. } = &e else {
        panic!("{e:?}")
    };
    // `ARG A11=${A10}${A10}`: the second `${A10}` crosses the limit.
    assert_eq!((span.start_line, span.start_column), (13, 15), "{e}");
    assert_eq!(span.end_column, 21);
    assert_eq!(
        e.to_string(),
        "Dockerfile:13:15: ARG A11: the expanded value is over 1 MiB (1048576 bytes)"
    );
    assert_eq!(e.line(), Some(13));
    assert_eq!(e.span(), Some(*span));
    // Up to A10 it plans.
    try_plan(&doubling(10), &o).unwrap();
}

#[test]
fn expansion_errors_point_at_the_word() {
    let e = try_plan("FROM busybox\nENV A=1 B=x${NOPE:?required}\n", &opts()).unwrap_err();
    let span = e.span().expect("a column");
    assert_eq!((span.start_line, span.start_column), (2, 12), "{e}");
    assert!(e.to_string().ends_with("NOPE: required"), "{e}");
    // A flag, and a word written over two lines (the whole argument then).
    let e = try_plan("FROM busybox\nCOPY --chown=${U:?} a /b\n", &opts()).unwrap_err();
    assert_eq!(
        e.span().map(|s| (s.start_line, s.start_column)),
        Some((2, 14))
    );
    let e = try_plan("FROM busybox\nWORKDIR /a${X\n", &opts()).unwrap_err();
    assert_eq!(e.span().map(|s| s.start_column), Some(11), "{e}");
    assert!(e.to_string().contains("missing '}'"), "{e}");
}

#[test]
fn an_expansion_error_in_an_onbuild_trigger_points_at_the_from() {
    // The trigger is parsed from the base image's config: its own positions are not
    // the Dockerfile's, so the error points at the FROM that ran it.
    let mut r = FakeResolver::new();
    let mut base = busybox_config();
    base.config.on_build = vec!["WORKDIR ${NOPE:?unset}".into()];
    r.add("onbase", base);
    let e = plan_source("# c\nFROM onbase\n", &opts(), &r).unwrap_err();
    let span = e.span().expect("a span");
    assert_eq!((span.start_line, span.start_column), (2, 1), "{e}");
    assert!(e.to_string().contains("NOPE: unset"), "{e}");
    // Even when the trigger's text happens to span the same bytes as the FROM.
    let mut r = FakeResolver::new();
    let mut base = busybox_config();
    base.config.on_build = vec!["ENV ABC=${}".into()];
    r.add("onbase", base);
    let e = plan_source("FROM onbase\n", &opts(), &r).unwrap_err();
    let span = e.span().expect("a span");
    assert_eq!((span.start_line, span.start_column), (1, 1), "{e}");
    assert!(e.to_string().contains("bad substitution"), "{e}");
}

#[test]
fn many_words_under_the_word_limit_stop_at_the_total() {
    // Each `ARG Bn=$A10` adds 1 MiB.
    let mut src = doubling(10);
    for n in 0..40 {
        let _ = writeln!(src, "ARG B{n}=$A10");
    }
    let e = try_plan(&src, &opts()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("the expanded values in this build add up to over 16 MiB (16777216 bytes)"),
        "{msg}"
    );
    // A1..A10 grew by about 2 MiB, B0..B13 by 14 MiB: B14 (line 27) is the first over.
    assert!(msg.contains("Dockerfile:27:1: ARG B14:"), "{msg}");
    // The same through a build arg copied into a stage by each `ARG G`, and through
    // RUN steps that each carry a 1 MiB environment. (A line is at most 64 KiB, so
    // big values come from build args or expansions.)
    let mut o = opts();
    o.build_args.insert("G".into(), "g".repeat(1 << 20));
    let mut src = "ARG G\nFROM busybox\n".to_owned();
    for _ in 0..40 {
        src.push_str("ARG G\n");
    }
    let e = try_plan(&src, &o).unwrap_err().to_string();
    // 1 MiB for the global ARG (line 1), 1 MiB per copy from line 3: line 18 is over.
    assert!(e.contains(":18:1: ARG G: the expanded values"), "{e}");
    let mut src = doubling(10) + "ENV E=$A10\n";
    for _ in 0..40 {
        src.push_str("RUN true\n");
    }
    let e = try_plan(&src, &opts()).unwrap_err().to_string();
    assert!(e.contains("RUN: the expanded values"), "{e}");
    // And through stages built FROM a stage that holds much.
    let mut src = doubling(10).replace("FROM busybox", "FROM busybox AS s0");
    for n in 1..40 {
        let _ = write!(src, "FROM s{} AS s{n}\nRUN true\n", n - 1);
    }
    let e = try_plan(&src, &opts()).unwrap_err().to_string();
    assert!(
        e.contains("the expanded values in this build add up"),
        "{e}"
    );
}
