//! Which files a step read by content, kept with its cache record, so that
//! `--explain-cache` can name the context files that changed, appeared or
//! vanished since the closest record (its key holds only one checksum per
//! `COPY` selection, which says that something changed, not what).
//!
//! For each build context a step reads by content (a `COPY` source, a
//! read-only bind mount; a stage's files are not listed, which would read
//! them all again at every export), the record keeps each selected path with a short digest of what
//! the checksum takes of it (kind, mode, size and content, link target),
//! up to [`LISTING_LIMIT`] paths per input; a larger selection keeps none
//! (the explanation then says only that the files changed). Keys are not
//! touched: this is beside the key, not in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use rbuild_ops::{BuildGraph, InputKey, Selection, VertexId};
use rbuild_solver::Outputs;
use rbuild_worker::LocalWorker;

/// Paths kept per input at most.
pub const LISTING_LIMIT: usize = 1000;

/// Paths named per kind of change.
const SHOWN: usize = 5;

/// The files one input gave a key by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFiles {
    /// The input's position among the step's inputs.
    pub input: usize,
    /// Path (relative to the input's root) → a short digest of its entry.
    pub files: BTreeMap<String, String>,
}

/// The files each input of step `id` gave its key by content, for the
/// inputs whose result is here and small enough to list.
pub fn input_files(
    worker: &LocalWorker,
    graph: &BuildGraph,
    outputs: &Outputs,
    id: VertexId,
) -> Vec<InputFiles> {
    let (Some(vertex), Some(solved)) = (graph.get(id), outputs.get(id)) else {
        return Vec::new();
    };
    let selections = vertex.op.content_selections();
    let mut out = Vec::new();
    for (pos, key) in solved.key_inputs.iter().enumerate() {
        if !matches!(key, InputKey::Content(_)) {
            continue;
        }
        let Some(&input_id) = vertex.inputs.get(pos) else {
            continue;
        };
        let (Some(input), Some(result)) = (
            graph.get(input_id),
            outputs
                .get(input_id)
                .and_then(rbuild_solver::Solved::available_result),
        ) else {
            continue;
        };
        let mut wanted: Vec<Selection> = selections
            .iter()
            .filter(|(i, _)| *i == pos)
            .map(|(_, s)| s.clone())
            .collect();
        if wanted.is_empty() {
            wanted.push(Selection::all());
        }
        let mut files = BTreeMap::new();
        let mut complete = true;
        for selection in &wanted {
            match worker.content_listing(input, &result, selection, LISTING_LIMIT) {
                Ok(Some(listing)) => {
                    for (path, digest) in listing {
                        let short = blake3::Hash::from(digest).to_hex()[..16].to_owned();
                        files.insert(path, short);
                    }
                }
                _ => complete = false,
            }
            if !complete || files.len() > LISTING_LIMIT {
                complete = false;
                break;
            }
        }
        if complete {
            out.push(InputFiles { input: pos, files });
        }
    }
    out
}

/// How the files of input `input` differ between `ours` and `theirs`: the
/// paths that changed, appeared (only ours) and vanished (only theirs), a
/// few of each by name; `None` when either side did not keep them.
pub fn describe_change(ours: &[InputFiles], theirs: &[InputFiles], input: usize) -> Option<String> {
    let a = &ours.iter().find(|f| f.input == input)?.files;
    let b = &theirs.iter().find(|f| f.input == input)?.files;
    let mut changed = Vec::new();
    let mut appeared = Vec::new();
    let mut vanished = Vec::new();
    for (path, d) in a {
        match b.get(path) {
            Some(e) if e == d => {}
            Some(_) => changed.push(path.as_str()),
            None => appeared.push(path.as_str()),
        }
    }
    for path in b.keys() {
        if !a.contains_key(path) {
            vanished.push(path.as_str());
        }
    }
    let mut parts = Vec::new();
    for (what, paths) in [
        ("changed", changed),
        ("appeared", appeared),
        ("vanished", vanished),
    ] {
        if paths.is_empty() {
            continue;
        }
        let names = paths[..paths.len().min(SHOWN)].join(", ");
        let more = paths.len().saturating_sub(SHOWN);
        if more > 0 {
            parts.push(format!("{what}: {names} and {more} more"));
        } else {
            parts.push(format!("{what}: {names}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(input: usize, v: &[(&str, &str)]) -> InputFiles {
        InputFiles {
            input,
            files: v
                .iter()
                .map(|(p, d)| ((*p).to_owned(), (*d).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn names_what_changed_appeared_and_vanished() {
        let ours = [files(1, &[("a", "1"), ("b", "2"), ("new", "3")])];
        let theirs = [files(1, &[("a", "1"), ("b", "9"), ("old", "4")])];
        assert_eq!(
            describe_change(&ours, &theirs, 1).as_deref(),
            Some("changed: b; appeared: new; vanished: old")
        );
        assert_eq!(describe_change(&ours, &theirs, 0), None, "no such input");
        assert_eq!(describe_change(&ours, &ours, 1), None, "nothing differs");
    }

    #[test]
    fn long_lists_are_cut() {
        let many: Vec<(String, String)> = (0..8).map(|i| (format!("f{i}"), "x".into())).collect();
        let ours = [InputFiles {
            input: 0,
            files: many.into_iter().collect(),
        }];
        let theirs = [files(0, &[])];
        assert_eq!(
            describe_change(&ours, &theirs, 0).as_deref(),
            Some("appeared: f0, f1, f2, f3, f4 and 3 more")
        );
    }
}
