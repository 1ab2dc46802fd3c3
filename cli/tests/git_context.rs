//! Git and URL build contexts and `ADD <git ref>`, against servers on
//! 127.0.0.1: `git daemon`, `git http-backend` behind python3's CGI server,
//! and a small HTTP server of the test's own for tarballs and Dockerfiles.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::http::serve;
use common::{Env, build_env, have};

/// A child process killed when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, what: &str) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what} did not start listening on 127.0.0.1:{port}");
}

fn need(tool: &str, package: &str) {
    assert!(have(tool), "{tool} is missing: install {package}");
}

/// Runs git in `dir`, asserting success; returns stdout trimmed.
fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git is missing: install git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn write(path: &Path, text: &str) {
    fs_err::create_dir_all(path.parent().unwrap()).unwrap();
    fs_err::write(path, text).unwrap();
}

/// A work repository `src` and its bare copy `srv/repo.git`, with one commit
/// on `main` tagged `v1` (annotated) holding a Dockerfile, `.dockerignore`,
/// `skip.txt` (ignored) and `sub/` with its own Dockerfile.
struct Repo {
    work: PathBuf,
    srv: PathBuf,
}

impl Repo {
    fn new(env: &Env) -> Self {
        need("git", "git");
        let work = env.path("src");
        let srv = env.path("srv");
        fs_err::create_dir_all(&work).unwrap();
        fs_err::create_dir_all(&srv).unwrap();
        git(&work, &["init", "-q"]);
        write(
            &work.join("Dockerfile"),
            "FROM busybox\nCOPY . /ctx\nRUN find /ctx | sort > /list\n",
        );
        write(&work.join(".dockerignore"), "skip.txt\n");
        write(&work.join("skip.txt"), "ignored\n");
        write(
            &work.join("sub/Dockerfile.sub"),
            "FROM busybox\nCOPY . /sub\nRUN find /sub | sort > /list\n",
        );
        write(&work.join("sub/a.txt"), "a\n");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "one"]);
        git(&work, &["tag", "-a", "v1", "-m", "v1"]);
        git(
            &srv,
            &["clone", "-q", "--bare", work.to_str().unwrap(), "repo.git"],
        );
        Self { work, srv }
    }

    /// A new commit on `main` adding `new.txt`, pushed; returns its id.
    fn commit_new_file(&self) -> String {
        write(&self.work.join("new.txt"), "new\n");
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", "two"]);
        let bare = self.srv.join("repo.git");
        git(&self.work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// `git daemon` serving `srv/` (`git://127.0.0.1:PORT/repo.git`).
    fn daemon(&self) -> Server {
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", self.srv.display()),
                self.srv.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon is missing: install git");
        let s = Server { child, port };
        wait_for(port, "git daemon");
        s
    }

    /// `git http-backend` as a CGI of python3's `http.server`
    /// (`http://127.0.0.1:PORT/cgi-bin/git/repo.git`), run as this user
    /// (not `nobody`, which cannot read the test's directories). Every
    /// request is logged to `www/requests.log` (see [`requests`]) as
    /// `METHOD /repo.git/PATH[?QUERY]`. The server speaks protocol v0
    /// (python's CGI passes no `Git-Protocol` header, and the script unsets
    /// it anyway), so `git ls-remote` is one GET of `info/refs` and only a
    /// fetch POSTs to `git-upload-pack`.
    fn http_backend(&self, env: &Env) -> Server {
        need("python3", "python3");
        let www = env.path("www");
        let log = www.join("requests.log");
        write(&log, "");
        write(
            &www.join("cgi-bin/git"),
            &format!(
                "#!/bin/sh\n\
                 echo \"$REQUEST_METHOD $PATH_INFO${{QUERY_STRING:+?$QUERY_STRING}}\" >> '{}'\n\
                 unset GIT_PROTOCOL HTTP_GIT_PROTOCOL\n\
                 exec git http-backend\n",
                log.display()
            ),
        );
        let script = www.join("cgi-bin/git");
        fs_err::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import http.server as h, os\nh.nobody_uid = os.getuid\n\
                 h.test(HandlerClass=h.CGIHTTPRequestHandler, port={port}, bind='127.0.0.1')"
            ))
            .current_dir(&www)
            .env("GIT_PROJECT_ROOT", &self.srv)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is missing: install python3");
        let s = Server { child, port };
        wait_for(port, "python3 http.server");
        s
    }
}

/// The requests the http backend of `env` got so far, as
/// `METHOD /repo.git/PATH[?QUERY]`.
fn requests(env: &Env) -> Vec<String> {
    fs_err::read_to_string(env.path("www/requests.log"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// How many requests of `env`'s http backend so far are `METHOD` for
/// `path` of repository `repo` (`git-upload-pack`: a fetch;
/// `info/refs?service=git-upload-pack`: resolving refs, or the start of a
/// fetch).
fn count(env: &Env, method: &str, repo: &str, path: &str) -> usize {
    let want = format!("{method} /{repo}/{path}");
    requests(env).iter().filter(|l| **l == want).count()
}

fn build(env: &Env, args: &[&str]) -> Output {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    env.run(&all)
}

fn build_ok(env: &Env, args: &[&str]) {
    let o = build(env, args);
    assert!(
        o.status.success(),
        "build {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `cat FILE` in a container of `image`.
fn cat(env: &Env, image: &str, file: &str) -> String {
    env.ok(&["run", "--rm", image, "cat", file])
}

#[test]
fn git_context_by_branch_tag_commit_and_subdir() {
    let env = build_env();
    let repo = Repo::new(&env);
    let first = repo.head();
    let d = repo.daemon();
    let url = format!("git://127.0.0.1:{}/repo.git", d.port);

    // The default branch: the whole tree, .dockerignore honoured, no .git.
    build_ok(&env, &["-t", "plain", &url]);
    let list = cat(&env, "plain", "/list");
    assert!(list.contains("/ctx/sub/a.txt\n"), "{list}");
    assert!(list.contains("/ctx/Dockerfile\n"), "{list}");
    assert!(!list.contains("skip.txt"), "{list}");
    assert!(!list.contains("/ctx/.git"), "{list}");

    // BUILDKIT_CONTEXT_KEEP_GIT_DIR=1 keeps .git, at the commit built.
    build_ok(
        &env,
        &[
            "-t",
            "kept",
            "--build-arg",
            "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1",
            &format!("{url}#main"),
        ],
    );
    let list = cat(&env, "kept", "/list");
    assert!(list.contains("/ctx/.git/HEAD\n"), "{list}");
    let head = env.ok(&["run", "--rm", "kept", "cat", "/ctx/.git/HEAD"]);
    assert_eq!(head.trim(), first);

    // An annotated tag and a subdirectory; -f is relative to the subdirectory.
    build_ok(
        &env,
        &[
            "-t",
            "tagsub",
            "-f",
            "Dockerfile.sub",
            &format!("{url}#v1:sub"),
        ],
    );
    assert_eq!(
        cat(&env, "tagsub", "/list"),
        "/sub\n/sub/Dockerfile.sub\n/sub/a.txt\n"
    );

    // After a new commit, the branch has the new file, the first commit by
    // its id and the tag do not.
    let second = repo.commit_new_file();
    assert_ne!(first, second);
    build_ok(&env, &["-t", "main2", &format!("{url}#main")]);
    assert!(cat(&env, "main2", "/list").contains("/ctx/new.txt\n"));
    build_ok(&env, &["-t", "bysha", &format!("{url}#{first}")]);
    let list = cat(&env, "bysha", "/list");
    assert!(list.contains("/ctx/sub/a.txt\n"), "{list}");
    assert!(!list.contains("new.txt"), "{list}");
    // The query form names the same things.
    build_ok(
        &env,
        &[
            "-t",
            "query",
            &format!("{url}?tag=v1&subdir=sub"),
            "-f",
            "Dockerfile.sub",
        ],
    );
    assert_eq!(cat(&env, "query", "/list"), cat(&env, "tagsub", "/list"));
}

#[test]
fn git_context_over_git_http_backend() {
    let env = build_env();
    let repo = Repo::new(&env);
    let s = repo.http_backend(&env);
    let url = format!("http://127.0.0.1:{}/cgi-bin/git/repo.git#main:sub", s.port);
    build_ok(&env, &["-t", "overhttp", "-f", "Dockerfile.sub", &url]);
    assert_eq!(
        cat(&env, "overhttp", "/list"),
        "/sub\n/sub/Dockerfile.sub\n/sub/a.txt\n"
    );
}

#[test]
fn a_bad_ref_or_subdir_is_a_one_line_error() {
    let env = build_env();
    let repo = Repo::new(&env);
    let d = repo.daemon();
    let url = format!("git://127.0.0.1:{}/repo.git", d.port);
    for (spec, want) in [
        (format!("{url}#nope"), "does not contain ref nope"),
        (format!("{url}#main:nodir"), "subdir nodir not found"),
        (
            format!("git://127.0.0.1:{}/absent.git", d.port),
            "absent.git",
        ),
    ] {
        let o = build(&env, &[&spec]);
        assert!(!o.status.success(), "{spec} built");
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{spec}: {err}");
        assert!(lines[0].contains(want), "{spec}: {err}");
    }
    // The state root holds no half-made context after the failures.
    let tmp = env.root().join("tmp");
    let left: Vec<_> = fs_err::read_dir(&tmp)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in tmp/: {left:?}");

    // ADD of a ref that does not exist names the Dockerfile line and the ref.
    let ctx = env.path("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM busybox\nADD {url}#nope /src\n"),
    );
    let o = build(&env, &[ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not contain ref nope"), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
}

#[test]
fn add_of_a_git_ref_is_keyed_by_its_commit() {
    let env = build_env();
    let repo = Repo::new(&env);
    let first = repo.head();
    let d = repo.daemon();
    let url = format!("git://127.0.0.1:{}/repo.git", d.port);
    let ctx = env.path("ctx");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM busybox\n\
             ADD {url}#main /src\n\
             RUN cat /proc/sys/kernel/random/uuid > /id && find /src | sort > /list\n\
             ADD --keep-git-dir {url}#v1 /kg\n\
             ADD --checksum={short} {url}#v1:sub /pinned\n",
            short = &first[..12]
        ),
    );
    let c = ctx.to_str().unwrap();
    build_ok(&env, &["-t", "added", c]);
    let id1 = cat(&env, "added", "/id");
    let list = cat(&env, "added", "/list");
    assert!(list.contains("/src/sub/a.txt\n"), "{list}");
    assert!(
        list.contains("/src/skip.txt\n"),
        "ADD takes the whole tree: {list}"
    );
    assert!(!list.contains("/src/.git"), "{list}");
    env.ok(&["run", "--rm", "added", "test", "-f", "/kg/.git/HEAD"]);
    env.ok(&["run", "--rm", "added", "test", "-f", "/pinned/a.txt"]);

    // Unchanged refs: every step is a cache hit.
    let o = build(&env, &["-t", "added", c]);
    assert!(o.status.success());
    assert_eq!(cat(&env, "added", "/id"), id1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("fetching"), "nothing is fetched again: {err}");

    // A new commit on the branch: a miss for it, the tag stays cached.
    repo.commit_new_file();
    let o = build(&env, &["-t", "added", c]);
    assert!(o.status.success());
    assert_ne!(cat(&env, "added", "/id"), id1);
    assert!(cat(&env, "added", "/list").contains("/src/new.txt\n"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("fetching").count(),
        1,
        "only main is fetched: {err}"
    );

    // A checksum that is not the commit's fails, naming both.
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM busybox\nADD --checksum=0123abcd {url}#v1 /src\n"),
    );
    let o = build(&env, &[c]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expected checksum to match 0123abcd"), "{err}");
    // COPY takes no git ref.
    write(
        &ctx.join("Dockerfile"),
        &format!("FROM busybox\nCOPY {url}#v1 /src\n"),
    );
    let o = build(&env, &[c]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("can't be a git ref for COPY"), "{err}");
}

/// The records of the stored git checkouts (`git-checkouts/` of the root).
fn checkout_records(env: &Env) -> Vec<String> {
    let dir = env.root().join("git-checkouts");
    let mut out: Vec<String> = fs_err::read_dir(&dir)
        .map(|d| {
            d.map(|e| fs_err::read_to_string(e.unwrap().path()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn a_git_context_is_kept_by_commit_and_shared_with_add() {
    const UPLOAD: &str = "git-upload-pack";
    const REFS: &str = "info/refs?service=git-upload-pack";
    let env = build_env();
    let repo = Repo::new(&env);
    let s = repo.http_backend(&env);
    let url = format!("http://127.0.0.1:{}/cgi-bin/git/repo.git#main", s.port);
    // A local Dockerfile (an absolute -f) that also ADDs the same ref.
    let df = env.path("Dockerfile.local");
    write(
        &df,
        &format!(
            "FROM busybox\nCOPY . /ctx\nADD {url} /added\n\
             RUN find /ctx /added | sort > /list\n"
        ),
    );
    let df = df.to_str().unwrap();

    // The first build resolves the ref and fetches the commit (a fetch is
    // one or more POSTs, a shallow one two): the ADD of the same commit
    // takes the checkout the context stored instead of fetching.
    let o = build(&env, &["-t", "one", "-f", df, &url]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let posts1 = count(&env, "POST", "repo.git", UPLOAD);
    assert!(posts1 >= 1, "{:?}", requests(&env));
    let refs1 = count(&env, "GET", "repo.git", REFS);
    assert!(
        refs1 >= 2,
        "the context and ADD resolve the ref: {:?}",
        requests(&env)
    );
    assert!(err.contains("using the stored checkout of"), "{err}");
    assert!(!err.contains("fetching "), "ADD fetches nothing: {err}");
    let list = cat(&env, "one", "/list");
    assert!(list.contains("/ctx/sub/a.txt\n"), "{list}");
    assert!(list.contains("/added/sub/a.txt\n"), "{list}");
    assert!(!list.contains("new.txt"), "{list}");
    let records = checkout_records(&env);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].contains(&repo.head()), "{records:?}");

    // Again: the ref is resolved again, nothing is fetched.
    build_ok(&env, &["-t", "two", "-f", df, &url]);
    assert!(
        count(&env, "GET", "repo.git", REFS) > refs1,
        "{:?}",
        requests(&env)
    );
    assert_eq!(
        count(&env, "POST", "repo.git", UPLOAD),
        posts1,
        "{:?}",
        requests(&env)
    );
    assert_eq!(cat(&env, "two", "/list"), list);

    // A checksum the commit does not match fails before any fetch.
    let bad = format!(
        "http://127.0.0.1:{}/cgi-bin/git/repo.git?checksum=0123abcd#main",
        s.port
    );
    let o = build(&env, &[&bad]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expected checksum to match 0123abcd"), "{err}");
    assert_eq!(
        count(&env, "POST", "repo.git", UPLOAD),
        posts1,
        "{:?}",
        requests(&env)
    );

    // `system df -v` counts the checkout as build cache.
    let df_out = env.ok(&["system", "df", "-v"]);
    assert!(
        df_out.contains("git checkout http://127.0.0.1:"),
        "{df_out}"
    );

    // A new commit on the branch: fetched once more (by the context only),
    // its content seen.
    let second = repo.commit_new_file();
    let o = build(&env, &["-t", "three", "-f", df, &url]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("fetching "), "ADD fetches nothing: {err}");
    let posts3 = count(&env, "POST", "repo.git", UPLOAD);
    assert!(posts3 > posts1, "{:?}", requests(&env));
    let list = cat(&env, "three", "/list");
    assert!(list.contains("/ctx/new.txt\n"), "{list}");
    assert!(list.contains("/added/new.txt\n"), "{list}");
    let records = checkout_records(&env);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records.iter().any(|r| r.contains(&second)), "{records:?}");

    // A record a killed writer left under its temporary name is swept by
    // the next command (its owner is dead); the records stay.
    let dead = env
        .root()
        .join("git-checkouts/tmp-4000000000.0badc0de-half");
    write(&dead, "{\"snap");
    env.ok(&["images"]);
    assert!(!dead.exists(), "a dead writer's temporary record is swept");
    assert_eq!(checkout_records(&env).len(), 2);

    // `builder prune -a -f` removes the stored checkouts; the next build
    // fetches again.
    env.ok(&["builder", "prune", "-a", "-f"]);
    assert_eq!(checkout_records(&env), Vec::<String>::new());
    build_ok(&env, &["-t", "four", "-f", df, &url]);
    assert!(
        count(&env, "POST", "repo.git", UPLOAD) > posts3,
        "{:?}",
        requests(&env)
    );
    assert_eq!(cat(&env, "four", "/list"), list);
}

/// Adds to `repo` (committed on `main` and pushed) a submodule `mod` of a
/// second repository `srv/sub.git` holding `subfile.txt`, with the relative
/// URL `../sub.git`. Returns the commit.
fn add_submodule(env: &Env, repo: &Repo) -> String {
    let sub = env.path("subsrc");
    fs_err::create_dir_all(&sub).unwrap();
    git(&sub, &["init", "-q"]);
    write(&sub.join("subfile.txt"), "from-sub\n");
    git(&sub, &["add", "-A"]);
    git(&sub, &["commit", "-qm", "sub"]);
    git(
        &repo.srv,
        &["clone", "-q", "--bare", sub.to_str().unwrap(), "sub.git"],
    );
    let bare_sub = repo.srv.join("sub.git");
    git(
        &repo.work,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            bare_sub.to_str().unwrap(),
            "mod",
        ],
    );
    git(
        &repo.work,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.mod.url",
            "../sub.git",
        ],
    );
    git(&repo.work, &["add", "-A"]);
    git(&repo.work, &["commit", "-qm", "submodule"]);
    let bare = repo.srv.join("repo.git");
    git(&repo.work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    repo.head()
}

#[test]
fn submodules_are_checked_out_unless_submodules_false() {
    let env = build_env();
    let repo = Repo::new(&env);
    let head = add_submodule(&env, &repo);
    let s = repo.http_backend(&env);
    let base = format!("http://127.0.0.1:{}/cgi-bin/git/repo.git", s.port);
    let nosub = format!("{base}?submodules=false");
    let df = env.path("Dockerfile.local");
    write(
        &df,
        &format!(
            "FROM busybox\nCOPY . /ctx\nADD {base}#main /added\nADD {nosub}#main /nosub\n\
             RUN find /ctx /added /nosub | sort > /list\n"
        ),
    );
    let df = df.to_str().unwrap();

    // By default the context and ADD have the submodule's files (fetched
    // from the same server: `../sub.git` is resolved against the remote),
    // and no `.git` of it; with `submodules=false` its directory is empty.
    build_ok(&env, &["-t", "withsub", "-f", df, &format!("{base}#main")]);
    assert!(
        count(&env, "POST", "sub.git", "git-upload-pack") >= 1,
        "{:?}",
        requests(&env)
    );
    let list = cat(&env, "withsub", "/list");
    for want in [
        "/ctx/mod/subfile.txt\n",
        "/added/mod/subfile.txt\n",
        "/nosub/mod\n",
        "/nosub/Dockerfile\n",
    ] {
        assert!(list.contains(want), "{want}: {list}");
    }
    assert!(!list.contains("/nosub/mod/"), "{list}");
    assert!(!list.contains(".git\n"), "{list}");
    assert!(!list.contains(".git/"), "{list}");
    assert_eq!(cat(&env, "withsub", "/ctx/mod/subfile.txt"), "from-sub\n");

    build_ok(&env, &["-t", "nosub", "-f", df, &format!("{nosub}#main")]);
    let list = cat(&env, "nosub", "/list");
    assert!(list.contains("/ctx/mod\n"), "{list}");
    assert!(!list.contains("/ctx/mod/"), "{list}");
    assert!(list.contains("/added/mod/subfile.txt\n"), "{list}");

    // One commit, two checkouts: the key of a stored checkout says whether
    // it has the submodules.
    let records = checkout_records(&env);
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert!(r.contains(&format!("\"commit\":\"{head}\"")), "{r}");
    }
    assert!(
        records.iter().any(|r| r.contains("\"submodules\":true")),
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r.contains("\"submodules\":false")),
        "{records:?}"
    );

    // With .git kept: HEAD is the same commit, and the submodule's .git
    // points into it.
    let ctx_df = env.path("Dockerfile.kept");
    write(&ctx_df, "FROM busybox\nCOPY . /ctx\n");
    build_ok(
        &env,
        &[
            "-t",
            "kept",
            "-f",
            ctx_df.to_str().unwrap(),
            "--build-arg",
            "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1",
            &format!("{base}#main"),
        ],
    );
    assert_eq!(cat(&env, "kept", "/ctx/.git/HEAD").trim(), head);
    assert_eq!(cat(&env, "kept", "/ctx/mod/subfile.txt"), "from-sub\n");
    assert_eq!(
        cat(&env, "kept", "/ctx/mod/.git"),
        "gitdir: ../.git/modules/mod\n"
    );

    // A submodule URL that is a local path is refused (the file transport
    // is off for submodules too), in one line.
    git(
        &repo.work,
        &[
            "config",
            "-f",
            ".gitmodules",
            "submodule.mod.url",
            repo.srv.join("sub.git").to_str().unwrap(),
        ],
    );
    git(&repo.work, &["commit", "-qam", "local path"]);
    let bare = repo.srv.join("repo.git");
    git(&repo.work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    let o = build(&env, &["-f", df, &format!("{base}#main")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("failed to update submodules"), "{err}");
    assert!(lines[0].contains("transport 'file' not allowed"), "{err}");
}

/// A tar entry with a raw name (so `..` can be written), gzip-compressed
/// with the others.
fn entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    if kind == tar::EntryType::Char {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn targz(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (n, k, d) in entries {
        entry(&mut b, n, *k, d);
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn url_contexts_tarballs_and_dockerfiles() {
    use tar::EntryType as T;
    let env = build_env();
    let df = b"FROM busybox\nCOPY . /c\nRUN find /c | sort > /list\n";
    let good = targz(&[
        ("Dockerfile", T::Regular, df),
        ("dir/", T::Directory, b""),
        ("dir/f.txt", T::Regular, b"f\n"),
        ("null", T::Char, b""),
    ]);
    let port = serve(good);
    let o = build(
        &env,
        &[
            "-t",
            "tarctx",
            &format!("http://127.0.0.1:{port}/ctx.tar.gz"),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("1 device nodes or FIFOs"), "{err}");
    assert_eq!(
        cat(&env, "tarctx", "/list"),
        "/c\n/c/Dockerfile\n/c/dir\n/c/dir/f.txt\n"
    );

    // A text file is the Dockerfile, with an empty context.
    let port = serve(b"FROM busybox\nRUN echo from-url > /x\n".to_vec());
    build_ok(
        &env,
        &[
            "-t",
            "dfurl",
            &format!("http://127.0.0.1:{port}/Dockerfile"),
        ],
    );
    assert_eq!(cat(&env, "dfurl", "/x"), "from-url\n");

    // A name climbing out of the context is refused; nothing lands outside.
    let evil = targz(&[
        ("Dockerfile", T::Regular, df),
        ("../../escaped.txt", T::Regular, b"x\n"),
    ]);
    let port = serve(evil);
    let o = build(&env, &[&format!("http://127.0.0.1:{port}/evil.tar.gz")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{err}"
    );
    assert!(err.contains("evil.tar.gz"), "{err}");
    assert!(!env.root().join("escaped.txt").exists());
    assert!(!env.dir.path().join("escaped.txt").exists());

    // Nothing listening: one line with the reason.
    let o = build(
        &env,
        &[&format!("http://127.0.0.1:{}/ctx.tar", free_port())],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");

    // Limits: a small download that unpacks big is stopped at the limit.
    let zeros = vec![0u8; 256 * 1024];
    let bomb = targz(&[
        ("Dockerfile", T::Regular, df),
        ("zeros", T::Regular, &zeros),
    ]);
    let port = serve(bomb);
    let o = env
        .cmd(&["build", &format!("http://127.0.0.1:{port}/bomb.tar.gz")])
        .env("RBUILD_CONTEXT_MAX_SIZE", "64k")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("larger than the limit of 65536 bytes"),
        "{err}"
    );
}

/// `git@HOST:PATH` and `ssh://` contexts go through git's ssh transport: with
/// `GIT_SSH_COMMAND` (which rbuild leaves to the user, as git does) naming a
/// stand-in for ssh that records the host and user git asked for and runs
/// the remote command (`git-upload-pack 'PATH'`) in the server's directory,
/// there is no sshd to run. The parse, the ref resolution (`ls-remote`), the
/// fetch and `ADD <git@…>` are all the real thing.
#[test]
fn scp_like_and_ssh_url_contexts_go_through_gits_ssh_transport() {
    let env = build_env();
    let repo = Repo::new(&env);
    let log = env.path("ssh.log");
    let stand_in = env.path("fake-ssh");
    // git runs: $GIT_SSH_COMMAND [-o ...] [-p PORT] [USER@]HOST 'COMMAND'.
    write(
        &stand_in,
        &format!(
            "#!/bin/sh\nfor last; do :; done\nfor a; do case $a in *@*) echo \"host $a\" >> {log};; esac; done\n\
             cd {srv} && exec sh -c \"$last\"\n",
            log = log.display(),
            srv = repo.srv.display()
        ),
    );
    fs_err::set_permissions(
        &stand_in,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let with_ssh = |args: &[&str]| {
        let mut all = vec!["build", "--progress=plain"];
        all.extend_from_slice(args);
        env.cmd(&all)
            .env("GIT_SSH_COMMAND", &stand_in)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ok = |o: Output, what: &str| {
        assert!(
            o.status.success(),
            "{what}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(
        with_ssh(&["-t", "scp", "git@127.0.0.1:repo.git#main"]),
        "git@ context",
    );
    let list = cat(&env, "scp", "/list");
    assert!(
        list.contains("/ctx/sub/a.txt\n") && !list.contains(".git"),
        "{list}"
    );
    let srv = repo.srv.join("repo.git");
    ok(
        with_ssh(&[
            "-t",
            "sshurl",
            &format!("ssh://builder@127.0.0.1{}#v1:sub", srv.display()),
            "-f",
            "Dockerfile.sub",
        ]),
        "ssh:// context",
    );
    assert_eq!(
        cat(&env, "sshurl", "/list"),
        "/sub\n/sub/Dockerfile.sub\n/sub/a.txt\n"
    );
    // ADD of an scp-like ref, keyed by its commit.
    let ctx = env.path("addctx");
    write(
        &ctx.join("Dockerfile"),
        "FROM busybox\nADD git@127.0.0.1:repo.git#main /added\n",
    );
    ok(
        with_ssh(&["-t", "added", ctx.to_str().unwrap()]),
        "ADD git@",
    );
    assert_eq!(cat(&env, "added", "/added/sub/a.txt"), "a\n");
    let seen = fs_err::read_to_string(&log).unwrap();
    assert!(seen.contains("host git@127.0.0.1\n"), "{seen}");
    assert!(seen.contains("host builder@127.0.0.1\n"), "{seen}");
}
