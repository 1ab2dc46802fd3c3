//! The variable scope of a Dockerfile, as `BuildKit`'s conversion keeps it and
//! both the planner ([`crate::plan`]) and the checks ([`crate::lint`]) walk it:
//! an ordered list of `NAME=value` pairs (the global scope of the platform
//! args and the meta ARGs before the first `FROM`, then each stage's own), and
//! the rule that gives an `ARG` its value.

use std::collections::BTreeMap;

/// An ordered scope (`llb.EnvList`): names in the order they were first set.
pub(crate) type Vars = Vec<(String, String)>;

/// `llb.EnvList.AddOrReplace`: a name set again moves to the end.
pub(crate) fn add_or_replace(env: &mut Vars, k: &str, v: &str) {
    env.retain(|(ek, _)| ek != k);
    env.push((k.to_owned(), v.to_owned()));
}

/// Sets in place, keeping the first position.
pub(crate) fn set_in_place(env: &mut Vars, k: &str, v: &str) {
    if let Some(e) = env.iter_mut().find(|(ek, _)| ek == k) {
        v.clone_into(&mut e.1);
    } else {
        env.push((k.to_owned(), v.to_owned()));
    }
}

pub(crate) fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str())
}

/// The predefined platform args (`BUILDPLATFORM`, `BUILDOS`, ..., `TARGETVARIANT`),
/// in `BuildKit`'s order; `os_version` adds `BUILDOSVERSION` and `TARGETOSVERSION`
/// (empty on Linux) where `BuildKit` lists them.
pub(crate) fn platform_args(
    build: &rbuild_oci::Platform,
    target: &rbuild_oci::Platform,
    os_version: bool,
) -> Vec<(&'static str, String)> {
    let variant = |p: &rbuild_oci::Platform| p.variant.clone().unwrap_or_default();
    let mut out = vec![
        ("BUILDPLATFORM", build.to_string()),
        ("BUILDOS", build.os.clone()),
    ];
    if os_version {
        out.push(("BUILDOSVERSION", String::new()));
    }
    out.extend([
        ("BUILDARCH", build.architecture.clone()),
        ("BUILDVARIANT", variant(build)),
        ("TARGETPLATFORM", target.to_string()),
        ("TARGETOS", target.os.clone()),
    ]);
    if os_version {
        out.push(("TARGETOSVERSION", String::new()));
    }
    out.extend([
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", variant(target)),
    ]);
    out
}

/// Where an `ARG`'s value came from.
pub(crate) enum ArgValue<'a> {
    /// `--build-arg NAME=value`.
    BuildArg(&'a str),
    /// The `ARG NAME=default`, expanded in the scope where it stands.
    Default(String),
    /// A stage's `ARG NAME` without a default: the global scope's value.
    Global(&'a str),
}

impl ArgValue<'_> {
    pub(crate) fn into_string(self) -> String {
        match self {
            Self::BuildArg(v) | Self::Global(v) => v.to_owned(),
            Self::Default(v) => v,
        }
    }
}

/// The value of `ARG name[=default]`: the build arg, else the default
/// (`expand`ed), else (in a stage: `global` given) the global scope's value;
/// `None` when there is none.
pub(crate) fn arg_value<'a, E>(
    name: &str,
    default: Option<&str>,
    build_args: &'a BTreeMap<String, String>,
    global: Option<&'a [(String, String)]>,
    expand: impl FnOnce(&str) -> Result<String, E>,
) -> Result<Option<ArgValue<'a>>, E> {
    if let Some(v) = build_args.get(name) {
        return Ok(Some(ArgValue::BuildArg(v)));
    }
    if let Some(d) = default {
        return expand(d).map(|v| Some(ArgValue::Default(v)));
    }
    Ok(global.and_then(|g| get(g, name)).map(ArgValue::Global))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_values_come_from_build_args_then_defaults_then_the_global_scope() {
        let build: BTreeMap<String, String> = [("A".to_owned(), "cli".to_owned())].into();
        let global: Vars = vec![("G".to_owned(), "global".to_owned())];
        let ok = |s: &str| Ok::<_, ()>(format!("<{s}>"));
        let v = |name: &str, default: Option<&str>, g: bool| {
            arg_value(name, default, &build, g.then_some(global.as_slice()), ok)
                .unwrap()
                .map(ArgValue::into_string)
        };
        assert_eq!(v("A", Some("d"), true).as_deref(), Some("cli"));
        assert_eq!(v("G", Some("d"), true).as_deref(), Some("<d>"));
        assert_eq!(v("G", None, true).as_deref(), Some("global"));
        assert_eq!(v("G", None, false), None);
        assert_eq!(v("X", None, true), None);
    }

    #[test]
    fn the_two_ways_of_setting_again() {
        let mut a: Vars = Vec::new();
        add_or_replace(&mut a, "X", "1");
        add_or_replace(&mut a, "Y", "2");
        add_or_replace(&mut a, "X", "3");
        assert_eq!(a, [("Y".into(), "2".into()), ("X".into(), "3".into())]);
        let mut b: Vars = Vec::new();
        set_in_place(&mut b, "X", "1");
        set_in_place(&mut b, "Y", "2");
        set_in_place(&mut b, "X", "3");
        assert_eq!(b, [("X".into(), "3".into()), ("Y".into(), "2".into())]);
    }

    #[test]
    fn platform_args_in_buildkits_order() {
        let p = rbuild_oci::Platform::parse("linux/arm/v7").unwrap();
        let names: Vec<&str> = platform_args(&p, &p, true)
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            names,
            [
                "BUILDPLATFORM",
                "BUILDOS",
                "BUILDOSVERSION",
                "BUILDARCH",
                "BUILDVARIANT",
                "TARGETPLATFORM",
                "TARGETOS",
                "TARGETOSVERSION",
                "TARGETARCH",
                "TARGETVARIANT"
            ]
        );
        assert_eq!(platform_args(&p, &p, false).len(), 8);
        assert_eq!(
            platform_args(&p, &p, false)[3],
            ("BUILDVARIANT", "v7".to_owned())
        );
    }
}
