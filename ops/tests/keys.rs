//! Cache-key stability (same definition → same key; any change → another
//! key) and build-graph construction rules.

use proptest::prelude::*;

use rbuild_ops::{BuildGraph, GraphError, ImagePin, Op, Vertex, VertexId};
use rbuild_ops::{CacheKey, Checksum, InputKey, cache_key};
use rbuild_ops::{
    CachePerms, CacheSharing, Chmod, Chown, Copy, ExecOp, FileAction, FileOp, Mkdir, Mkfile, Mount,
    MountKind, NetworkMode, Rm, SecurityMode, SourceOp, UserRef,
};

fn exec_strategy() -> impl Strategy<Value = ExecOp> {
    (
        prop::collection::vec("[a-z /-]{0,8}", 1..4),
        prop::collection::vec("[A-Z]{1,4}=[a-z]{0,4}", 0..3),
        "/[a-z]{0,6}",
        "[a-z0-9:]{0,6}",
        any::<bool>(),
        prop::option::of("[a-z]{1,6}"),
        0u32..0o7777,
    )
        .prop_map(|(args, env, cwd, user, host_net, secret, mode)| {
            let mut op = ExecOp::new(args, 0);
            op.env = env;
            op.cwd = cwd;
            op.user = user;
            if host_net {
                op.network = NetworkMode::Host;
            }
            op.mounts.push(Mount {
                target: "/cache".into(),
                kind: MountKind::Cache {
                    id: "c".into(),
                    sharing: CacheSharing::Shared,
                    from: None,
                    source: "/".into(),
                    readonly: false,
                    perms: Some(CachePerms::new(0, 0, mode)),
                },
            });
            if let Some(id) = secret {
                op.mounts.push(Mount {
                    target: format!("/run/secrets/{id}"),
                    kind: MountKind::Secret {
                        id,
                        env: None,
                        required: false,
                        mode: 0o400,
                        uid: 0,
                        gid: 0,
                    },
                });
            }
            op
        })
}

/// Change exactly one field of the op, in a way that always differs.
fn mutate_exec(op: &ExecOp, which: usize) -> ExecOp {
    let mut m = op.clone();
    match which % 14 {
        0 => m.args[0].push('x'),
        1 => m.args.push("extra".into()),
        2 => m.env.push("NEW=1".into()),
        3 => m.cwd.push('x'),
        4 => m.user.push('x'),
        5 => {
            m.network = if m.network == NetworkMode::None {
                NetworkMode::Sandbox
            } else {
                NetworkMode::None
            }
        }
        6 => m.security = SecurityMode::Insecure,
        7 => m.hostname = Some("h".into()),
        8 => m.extra_hosts.push(("a".into(), "1.2.3.4".into())),
        12 => m.shm_size = Some(m.shm_size.unwrap_or(0) + 1),
        13 => m.ulimits.push(rbuild_ops::Ulimit {
            name: "nofile".into(),
            soft: 1,
            hard: 2,
        }),
        9 => {
            if let MountKind::Cache { perms: Some(p), .. } = &mut m.mounts[0].kind {
                p.mode ^= 0o1;
            }
        }
        10 => {
            if let MountKind::Cache { sharing, .. } = &mut m.mounts[0].kind {
                *sharing = CacheSharing::Locked;
            }
        }
        _ => m.mounts.push(Mount {
            target: "/tmp".into(),
            kind: MountKind::Tmpfs { size: Some(1) },
        }),
    }
    m
}

fn copy_strategy() -> impl Strategy<Value = Copy> {
    (
        prop::collection::vec("[a-z*.]{1,6}", 1..3),
        "/[a-z]{0,6}/?",
        prop::array::uniform8(any::<bool>()),
        prop::option::of(0u32..0o7777),
    )
        .prop_map(|(src, dest, flags, mode)| {
            let mut c = Copy::new(1, src, dest);
            c.follow_symlinks = flags[0];
            c.dir_contents_only = flags[1];
            c.create_dest_path = flags[2];
            c.allow_wildcard = flags[3];
            c.allow_empty_wildcard = flags[4];
            c.attempt_unpack = flags[5];
            if flags[6] {
                c.required_paths = vec!["/a/b".into()];
            }
            if flags[7] {
                c.owner = Some(Chown {
                    user: UserRef::Name("app".into()),
                    group: None,
                });
            }
            c.mode = mode.map(Chmod::Octal);
            c
        })
}

fn mutate_copy(c: &Copy, which: usize) -> Copy {
    let mut m = c.clone();
    match which % 16 {
        0 => m.src_paths[0].push('x'),
        1 => m.src_paths.push("more".into()),
        2 => m.dest.push('x'),
        3 => m.follow_symlinks ^= true,
        4 => m.dir_contents_only ^= true,
        5 => m.create_dest_path ^= true,
        6 => m.allow_wildcard ^= true,
        7 => m.allow_empty_wildcard ^= true,
        8 => m.attempt_unpack ^= true,
        9 => m.required_paths.push("/req".into()),
        10 => {
            m.owner = match m.owner {
                Some(_) => None,
                None => Some(Chown {
                    user: UserRef::Id(1000),
                    group: Some(UserRef::Id(1000)),
                }),
            }
        }
        11 => {
            m.mode = match m.mode {
                Some(Chmod::Octal(x)) => Some(Chmod::Octal(x ^ 1)),
                _ => Some(Chmod::Symbolic("u+x".into())),
            }
        }
        12 => m.include_patterns.push("*.rs".into()),
        13 => m.exclude_patterns.push("*.md".into()),
        14 => m.timestamp = Some(m.timestamp.unwrap_or(0) + 1),
        _ => m.src_input = 0,
    }
    m
}

fn file_op(c: Copy) -> Op {
    Op::File(FileOp {
        base: Some(0),
        actions: vec![FileAction::Copy(c)],
    })
}

fn inputs() -> Vec<InputKey> {
    vec![
        InputKey::Key(CacheKey([1; 32])),
        InputKey::Content(vec![Checksum([2; 32])]),
    ]
}

proptest! {
    #[test]
    fn exec_key_is_stable_and_sensitive(op in exec_strategy(), which in 0usize..14) {
        let key = cache_key(&Op::Exec(op.clone()), &inputs());
        prop_assert_eq!(key, cache_key(&Op::Exec(op.clone()), &inputs()));
        let mutated = mutate_exec(&op, which);
        prop_assert_ne!(key, cache_key(&Op::Exec(mutated), &inputs()));
    }

    #[test]
    fn proxy_env_is_not_part_of_the_key(op in exec_strategy(), proxy in "[a-z:/.0-9]{0,12}") {
        // BuildKit clears ExecOp's ProxyEnv before hashing: HTTP_PROXY given as
        // a build arg re-runs nothing.
        let key = cache_key(&Op::Exec(op.clone()), &inputs());
        let mut with_proxy = op;
        with_proxy.proxy_env.push(format!("HTTP_PROXY={proxy}"));
        prop_assert_eq!(key, cache_key(&Op::Exec(with_proxy), &inputs()));
    }

    #[test]
    fn copy_key_is_stable_and_sensitive(c in copy_strategy(), which in 0usize..16) {
        let key = cache_key(&file_op(c.clone()), &inputs());
        prop_assert_eq!(key, cache_key(&file_op(c.clone()), &inputs()));
        prop_assert_ne!(key, cache_key(&file_op(mutate_copy(&c, which)), &inputs()));
    }

    #[test]
    fn input_keys_are_part_of_the_key(op in exec_strategy(), byte in 0usize..32, sum in any::<bool>()) {
        let op = Op::Exec(op);
        let key = cache_key(&op, &inputs());
        let mut changed = inputs();
        if sum {
            if let InputKey::Content(s) = &mut changed[1] { s[0].0[byte] ^= 1; }
        } else if let InputKey::Key(k) = &mut changed[0] {
            k.0[byte] ^= 1;
        }
        prop_assert_ne!(key, cache_key(&op, &changed));
        // Same bytes as key vs as checksum are different contributions.
        let as_sum = vec![InputKey::Content(vec![Checksum([1; 32])]), inputs()[1].clone()];
        prop_assert_ne!(key, cache_key(&op, &as_sum));
        // Order of inputs matters.
        let mut swapped = inputs();
        swapped.reverse();
        prop_assert_ne!(key, cache_key(&op, &swapped));
    }

    #[test]
    fn cache_key_hex_round_trips(bytes in prop::array::uniform32(any::<u8>())) {
        let k = CacheKey(bytes);
        let hex = k.to_string();
        prop_assert_eq!(hex.len(), 64);
        prop_assert_eq!(hex.parse::<CacheKey>().unwrap(), k);
    }
}

#[test]
fn every_file_action_and_source_is_keyed() {
    let ops: Vec<Op> = vec![
        SourceOp::Scratch.into(),
        SourceOp::Image {
            reference: "alpine".into(),
            pin: ImagePin::ImageId("sha256:00".into()),
            platform: None,
            chain_id: None,
        }
        .into(),
        SourceOp::Image {
            reference: "alpine".into(),
            pin: ImagePin::Manifest("sha256:00".into()),
            platform: None,
            chain_id: None,
        }
        .into(),
        SourceOp::Image {
            reference: "alpine".into(),
            pin: ImagePin::ImageId("sha256:01".into()),
            platform: None,
            chain_id: None,
        }
        .into(),
        SourceOp::Http {
            url: "http://127.0.0.1/x".into(),
            checksum: None,
            filename: None,
            chmod: None,
        }
        .into(),
        SourceOp::Http {
            url: "http://127.0.0.1/x".into(),
            checksum: None,
            filename: Some("y".into()),
            chmod: None,
        }
        .into(),
        FileOp {
            base: Some(0),
            actions: vec![FileAction::Mkdir(Mkdir {
                path: "/app".into(),
                mode: 0o755,
                make_parents: true,
                owner: None,
                timestamp: None,
            })],
        }
        .into(),
        FileOp {
            base: Some(0),
            actions: vec![FileAction::Mkfile(Mkfile {
                path: "/f".into(),
                data: b"heredoc".to_vec(),
                mode: 0o644,
                owner: None,
                timestamp: None,
            })],
        }
        .into(),
        FileOp {
            base: Some(0),
            actions: vec![FileAction::Mkfile(Mkfile {
                path: "/f".into(),
                data: b"heredoc!".to_vec(),
                mode: 0o644,
                owner: None,
                timestamp: None,
            })],
        }
        .into(),
        FileOp {
            base: Some(0),
            actions: vec![FileAction::Rm(Rm {
                path: "/f".into(),
                allow_not_found: true,
                allow_wildcard: false,
            })],
        }
        .into(),
    ];
    let keys: Vec<CacheKey> = ops.iter().map(|o| cache_key(o, &[])).collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "all distinct: {keys:?}");
    // The JSON form of ops round-trips (the frontend may dump graphs).
    for op in &ops {
        let json = serde_json::to_string(op).unwrap();
        let back: Op = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, op);
    }
}

#[test]
fn volatile_ops_and_content_selections() {
    let ctx: Op = SourceOp::Context {
        name: "context".into(),
        include_patterns: vec![],
        exclude_patterns: vec![],
        follow_paths: vec![],
    }
    .into();
    assert!(ctx.is_volatile());
    let pinned: Op = SourceOp::Http {
        url: "u".into(),
        checksum: Some("sha256:00".into()),
        filename: None,
        chmod: None,
    }
    .into();
    assert!(!pinned.is_volatile());
    let copy = file_op(Copy::new(1, vec!["a".into(), "b/*".into()], "/x/"));
    let sel = copy.content_selections();
    assert_eq!(sel.len(), 1);
    assert_eq!(sel[0].0, 1);
    assert_eq!(sel[0].1.paths, vec!["a", "b/*"]);
    let mut run = ExecOp::new(vec!["true".into()], 0);
    run.mounts.push(Mount {
        target: "/src".into(),
        kind: MountKind::Bind {
            input: 1,
            selector: String::new(),
            readonly: true,
        },
    });
    let sel = Op::Exec(run).content_selections();
    assert_eq!(sel[0].1.paths, vec!["."]);
}

// ---------------------------------------------------------------- graph

fn img(name: &str) -> Vertex {
    Vertex::new(
        SourceOp::Image {
            reference: name.into(),
            pin: ImagePin::ImageId(format!("sha256:{name}")),
            platform: None,
            chain_id: None,
        },
        vec![],
        format!("FROM {name}"),
    )
}

fn run_on(base: VertexId, cmd: &str) -> Vertex {
    Vertex::new(
        ExecOp::new(vec![cmd.into()], 0),
        vec![base],
        format!("RUN {cmd}"),
    )
}

#[test]
fn graph_rejects_unknown_inputs_and_bad_indexes() {
    let mut g = BuildGraph::new();
    let err = g.add(run_on(VertexId(7), "x")).unwrap_err();
    assert!(matches!(err, GraphError::UnknownInput { .. }), "{err}");
    let base = g.add(img("alpine")).unwrap();
    let bad = Vertex::new(ExecOp::new(vec!["x".into()], 1), vec![base], "RUN x");
    let err = g.add(bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "vertex \"RUN x\" uses input index 1 but has only 1 inputs"
    );
}

#[test]
fn prune_keeps_what_targets_need() {
    let mut g = BuildGraph::new();
    let a = g.add(img("alpine")).unwrap();
    let b = g.add(img("debian")).unwrap();
    let ra = g.add(run_on(a, "one")).unwrap();
    let rb = g.add(run_on(b, "two")).unwrap();
    let top = g.add(run_on(ra, "three")).unwrap();
    assert_eq!(g.required(&[top]).unwrap(), vec![a, ra, top]);
    assert_eq!(g.dependents(a), vec![ra]);
    assert_eq!(g.prune(&[top]).unwrap(), 2);
    assert_eq!(g.len(), 3);
    assert!(g.get(rb).is_none());
    assert!(g.get(top).is_some());
    // Ids of kept vertices are stable, and a pruned definition can come back.
    let again = g.add(img("debian")).unwrap();
    assert!(g.get(again).is_some());
    let r = g.add(run_on(again, "four")).unwrap();
    let order = g.ids();
    let pos = |id| order.iter().position(|x| *x == id).unwrap();
    assert!(pos(again) < pos(r), "topological order after reuse of ids");
    assert!(matches!(
        g.required(&[VertexId(99)]),
        Err(GraphError::UnknownVertex(_))
    ));
}

// ---------------------------------------------------------------- base images

fn image_op(reference: &str, pin: &str, chain_id: Option<&str>, platform: Option<&str>) -> Op {
    SourceOp::Image {
        reference: reference.into(),
        pin: ImagePin::ImageId(pin.into()),
        platform: platform.map(Into::into),
        chain_id: chain_id.map(Into::into),
    }
    .into()
}

#[test]
fn a_base_image_is_keyed_by_its_layers_not_its_name_or_config() {
    let key = |op: Op| cache_key(&op, &[]);
    let base = key(image_op(
        "docker.io/library/busybox:latest",
        "sha256:c1",
        Some("sha256:l1"),
        None,
    ));
    // Another name, another config (image ID), the same layers: the same key.
    assert_eq!(
        key(image_op(
            "localhost/mine:v2",
            "sha256:c2",
            Some("sha256:l1"),
            None
        )),
        base
    );
    // Other layers, or another platform: another key.
    assert_ne!(
        key(image_op(
            "docker.io/library/busybox:latest",
            "sha256:c1",
            Some("sha256:l2"),
            None
        )),
        base
    );
    assert_ne!(
        key(image_op(
            "docker.io/library/busybox:latest",
            "sha256:c1",
            Some("sha256:l1"),
            Some("linux/arm64")
        )),
        base
    );
    // Without layers (no chain ID), the pin keys it, still not the name.
    let pinned = key(image_op("a", "sha256:c1", None, None));
    assert_eq!(key(image_op("b", "sha256:c1", None, None)), pinned);
    assert_ne!(key(image_op("a", "sha256:c2", None, None)), pinned);
    assert_ne!(pinned, base);
}

fn git_op(remote: &str, reference: &str, commit: &str, subdir: &str, keep: bool) -> Op {
    SourceOp::Git {
        remote: remote.into(),
        reference: reference.into(),
        commit: commit.into(),
        subdir: subdir.into(),
        keep_git_dir: keep,
        submodules: true,
    }
    .into()
}

#[test]
fn a_git_source_is_keyed_by_its_commit_not_its_remote() {
    let a = "a".repeat(40);
    let b = "b".repeat(40);
    let key = |op: Op| cache_key(&op, &[]);
    let base = key(git_op("https://h/r.git", "main", &a, "", false));
    // The same commit from a mirror, or under another ref name: the same key.
    assert_eq!(
        base,
        key(git_op("git://mirror/r.git", "main", &a, "", false))
    );
    assert_eq!(base, key(git_op("https://h/r.git", "v1", &a, "", false)));
    // Another commit, subdir or .git: another key.
    assert_ne!(base, key(git_op("https://h/r.git", "main", &b, "", false)));
    assert_ne!(
        base,
        key(git_op("https://h/r.git", "main", &a, "sub", false))
    );
    let kept = key(git_op("https://h/r.git", "main", &a, "", true));
    assert_ne!(base, kept);
    // Without submodules: another tree, another key.
    let Op::Source(SourceOp::Git {
        remote,
        reference,
        commit,
        subdir,
        keep_git_dir,
        ..
    }) = git_op("https://h/r.git", "main", &a, "", false)
    else {
        unreachable!()
    };
    let no_sub = SourceOp::Git {
        remote,
        reference,
        commit,
        subdir,
        keep_git_dir,
        submodules: false,
    };
    assert_ne!(base, key(no_sub.into()));
    // With .git the ref is part of what is checked out (its branch).
    assert_ne!(kept, key(git_op("https://h/r.git", "dev", &a, "", true)));
    assert!(!git_op("https://h/r.git", "main", &a, "", false).is_volatile());
}
