//! rbuild against BuildKit itself: `testdata/buildkit-diff/run.sh` builds each of
//! its cases with `DOCKER_BUILDKIT=1 docker build` and with rbuild and compares the
//! images path by path (type, mode, owner, size, content) and config, as the
//! conformance harness does; for the cases that expect a failure, BuildKit must
//! reject each Dockerfile and rbuild too. Needs root and a running dockerd (CI
//! starts one); fails with a message otherwise.

#[test]
fn images_match_what_buildkit_builds_from_the_same_contexts() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: building needs root"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/buildkit-diff/run.sh"
    );
    let o = std::process::Command::new(script)
        .arg(env!("CARGO_BIN_EXE_rbuild"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() != Some(77), "cannot run: {out}");
    assert!(o.status.success(), "{out}\n{err}");
    // Every case folder reported ok (a failing case, each of its Dockerfiles).
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/buildkit-diff");
    let cases: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().join("make.sh").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(cases.len() >= 21, "only {} cases in {dir}", cases.len());
    for c in &cases {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("ok   {c} "))
                    || l.starts_with(&format!("ok   {c}/"))),
            "case {c} not reported ok:\n{out}"
        );
    }
}
