//! What the tests of a build cache shared between machines have in common,
//! whichever way it travels (`cache_export.rs`: a directory,
//! `cache_registry.rs`: a registry): the builds they run and their steps.

use super::steps::{Machine, Steps, set};

/// A multi-stage build with RUN, COPY and a cache mount; the final stage
/// copies from the other.
pub const MULTI: &str = "FROM busybox AS tools\n\
COPY tool.txt /src/tool.txt\n\
RUN --mount=type=cache,target=/cache cp /src/tool.txt /cache/t && tr a-z A-Z < /src/tool.txt > /tool.out\n\
FROM busybox\n\
COPY app/ /app/\n\
RUN cat /app/*.txt > /app.out\n\
COPY --from=tools /tool.out /tool.out\n";

/// The steps of `MULTI` (the FROM of both stages is one vertex).
pub const FROM: &str = "[tools 1/3] FROM docker.io/library/busybox:latest";
pub const T2: &str = "[tools 2/3] COPY tool.txt /src/tool.txt";
pub const T3: &str = "[tools 3/3] RUN --mount=type=cache,target=/cache cp /src/tool.txt /cache/t && tr a-z A-Z < /src/tool.txt > /tool.out";
pub const F2: &str = "[stage-1 2/4] COPY app/ /app/";
pub const F3: &str = "[stage-1 3/4] RUN cat /app/*.txt > /app.out";
pub const F4: &str = "[stage-1 4/4] COPY --from=tools /tool.out /tool.out";

/// `MULTI`'s context in `dir` of machine `m` (with a file no step reads).
pub fn multi_context(m: &Machine, dir: &str) {
    m.write(&format!("{dir}/Dockerfile"), MULTI);
    m.write(&format!("{dir}/tool.txt"), "tool one\n");
    m.write(&format!("{dir}/app/a.txt"), "a1\n");
    m.write(&format!("{dir}/app/b.txt"), "b1\n");
    m.write(&format!("{dir}/unused.txt"), "u\n");
}

/// A fresh machine with the base of `a` builds `MULTI` from `cache_from` (a
/// `--cache-from` value), whose top layer of `F4` is lost: `F4` runs again
/// (its record answered, its layer could not be had), the other steps are
/// cached. Returns that machine and its image.
pub fn only_f4_runs_again(a: &Machine, cache_from: &str) -> (Machine, String) {
    let b = Machine::with_base_of(a);
    multi_context(&b, "ctx");
    let (s, id) = b.build(&["--cache-from", cache_from, &b.p("ctx")]);
    assert_eq!(Steps::steps(&s.ran), set(&[F4]), "{}", s.log);
    assert!(
        Steps::steps(&s.cached).is_superset(&set(&[FROM, T2, T3, F2, F3])),
        "{}",
        s.log
    );
    assert_eq!(b.cat(&id, "/tool.out"), "TOOL ONE\n");
    (b, id)
}

/// A RUN that adds a file named after `$N` to the cache mount `pkgs` and
/// lists what it holds.
pub const ONE_MOUNT: &str = "FROM busybox\n\
ARG N\n\
RUN --mount=type=cache,id=pkgs,target=/var/cache/pkgs \
echo $N > /var/cache/pkgs/from-$N && ls /var/cache/pkgs > /pkgs\n";

/// A machine (fresh, or with the base of `like`) with `ONE_MOUNT` in `one/`.
pub fn one_mount_machine(like: Option<&Machine>) -> Machine {
    let m = like.map_or_else(Machine::new, Machine::with_base_of);
    m.write("one/Dockerfile", ONE_MOUNT);
    m
}

/// Builds `one/` of `m` with `N=n` and `args`: its steps and image.
pub fn build_one_mount(m: &Machine, n: &str, args: &[&str]) -> (Steps, String) {
    let n = format!("N={n}");
    let ctx = m.p("one");
    let mut all = vec!["--build-arg", n.as_str()];
    all.extend_from_slice(args);
    all.push(&ctx);
    m.build(&all)
}
