//! Builds through the binary and what became of their steps, read from the
//! JSON progress (`vertex_started` names a step, `vertex_cached` /
//! `vertex_done` say what became of it, `vertex_key` gives its cache key):
//! the helpers of the build-cache tests (`build_cache.rs`, `cache_export.rs`).

use std::collections::{BTreeMap, BTreeSet};

use super::Env;

/// What became of each step of one build, by step name (`[2/5] COPY a.txt
/// /a.txt`, `[final 3/3] RUN ...`). `[internal]` vertices (loading the
/// context) and the image export (`exporting to image`) are left out of
/// `ran` and `cached`: they always run, as in `BuildKit`. Side steps
/// (`exporting cache to DIR`, `importing cache manifest from DIR`) are in.
#[derive(Debug, Default)]
pub struct Steps {
    pub ran: BTreeSet<String>,
    pub cached: BTreeSet<String>,
    /// Step name → cache key.
    pub keys: BTreeMap<String, String>,
    /// Steps reported cached, or run, twice (a record of an imported cache
    /// that cannot be loaded is reported cached, then run: in both sets).
    pub twice: Vec<String>,
    /// The whole progress, for assertion messages.
    pub log: String,
}

impl Steps {
    pub fn parse(log: &str) -> Self {
        let mut names = BTreeMap::new();
        let mut s = Steps {
            log: log.to_owned(),
            ..Steps::default()
        };
        for line in log.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad progress line {line:?}: {e}"));
            if v["event"] == "check_warning" {
                continue; // a build check's warning (issue 17), about no step
            }
            let id = v["id"].as_u64().unwrap_or_else(|| panic!("no id: {line}"));
            let event = v["event"].as_str();
            if let (Some("vertex_started" | "vertex_cached"), Some(name)) =
                (event, v["name"].as_str())
            {
                names.insert(id, name.to_owned());
            }
            let name = || -> String {
                names
                    .get(&id)
                    .unwrap_or_else(|| panic!("event before the step started: {line}\n{log}"))
                    .clone()
            };
            match event {
                Some("vertex_cached") => {
                    let name = name();
                    if !name.starts_with("[internal]") && !s.cached.insert(name.clone()) {
                        s.twice.push(name);
                    }
                }
                Some("vertex_done") => {
                    let name = name();
                    if !name.starts_with("[internal]")
                        && !name.starts_with("exporting to ")
                        && !s.ran.insert(name.clone())
                    {
                        s.twice.push(name);
                    }
                }
                Some("vertex_key") => {
                    let key = v["key"].as_str().unwrap().to_owned();
                    assert_eq!(key.len(), 64, "{line}");
                    assert!(s.keys.insert(name(), key).is_none(), "{log}");
                }
                _ => {}
            }
        }
        s
    }

    /// The steps of the Dockerfile in `set` (not the side steps).
    pub fn steps(set: &BTreeSet<String>) -> BTreeSet<String> {
        set.iter()
            .filter(|n| n.starts_with('['))
            .filter(|n| !n.starts_with("[internal]"))
            .cloned()
            .collect()
    }

    /// Asserts the steps that executed and the ones answered from the cache
    /// (each reported once, and either run or cached).
    pub fn assert(&self, ran: &[&str], cached: &[&str]) {
        assert!(self.twice.is_empty(), "steps reported twice:\n{}", self.log);
        assert!(
            self.ran.is_disjoint(&self.cached),
            "a step both ran and was cached:\n{}",
            self.log
        );
        assert_eq!(self.ran, set(ran), "steps that ran\n{}", self.log);
        assert_eq!(
            self.cached,
            set(cached),
            "steps that were cached\n{}",
            self.log
        );
    }
}

/// A set of step names.
pub fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// One machine: a state root (with the busybox base imported by
/// [`Machine::new`]) and a scratch directory for contexts.
pub struct Machine {
    pub env: Env,
}

impl Machine {
    /// A fresh state root with the busybox base (see `common::build_env`).
    pub fn new() -> Self {
        Self {
            env: super::build_env(),
        }
    }

    /// Another machine with `other`'s busybox base, as `save` wrote it and
    /// `load` read it (the same image ID; a pull from a registry gives the
    /// same).
    pub fn with_base_of(other: &Machine) -> Self {
        let env = Env::new();
        let tar = env.path("busybox-save.tar");
        other
            .env
            .ok(&["save", "-o", tar.to_str().unwrap(), "busybox:latest"]);
        env.ok(&["load", "-q", "-i", tar.to_str().unwrap()]);
        fs_err::remove_file(&tar).unwrap();
        Self { env }
    }

    /// The path of `rel` in the scratch directory.
    pub fn p(&self, rel: &str) -> String {
        self.env.path(rel).to_string_lossy().into_owned()
    }

    /// Writes `text` to `rel` in the scratch directory (parents made).
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.env.path(rel);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(p, text).unwrap();
    }

    /// Builds with JSON progress and `--iidfile`; returns the steps and the
    /// image ID.
    pub fn build(&self, args: &[&str]) -> (Steps, String) {
        let iid = self.p("iid");
        let _ = std::fs::remove_file(&iid);
        let mut a = vec!["build", "--progress", "json", "--iidfile", &iid];
        a.extend_from_slice(args);
        let o = self.env.run(&a);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "build {args:?} failed:\n{out}\n{err}");
        let id = fs_err::read_to_string(&iid).unwrap();
        assert!(id.starts_with("sha256:"), "{id}");
        (Steps::parse(&err), id)
    }

    /// `cat PATH` in the image `id`.
    pub fn cat(&self, id: &str, path: &str) -> String {
        self.env.ok(&["run", "--rm", id, "cat", path])
    }
}
