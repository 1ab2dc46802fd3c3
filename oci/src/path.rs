//! Go's `path` package for `/`-separated paths (the paths inside an image).

/// Go's `path.Clean` (and `filepath.Clean` on Linux): collapses repeated `/`,
/// removes `.` elements and `..` after a name, drops `..` right after the root,
/// removes a trailing `/`; an empty result is `.`.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    // How many leading `..` elements `parts` holds (they cannot be removed).
    let mut dotdot = 0;
    for elem in path.split('/') {
        match elem {
            "" | "." => {}
            ".." => {
                if parts.len() > dotdot {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                    dotdot += 1;
                }
            }
            e => parts.push(e),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn cleans_like_go() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("//a//b/", "/a/b"),
            ("/a/../../b/./c/", "/b/c"),
            ("../x", "../x"),
            ("a/../..", ".."),
            ("../../a/..", "../.."),
            ("a/b/../../..", ".."),
            ("/..", "/"),
        ] {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }
}
