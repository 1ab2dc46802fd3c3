//! A fake image store for frontend tests.
#![allow(dead_code)] // each test binary uses a part

use std::cell::RefCell;
use std::collections::BTreeMap;

use rbuild_frontend::{
    BuildOptions, BuildPlan, FrontendError, ImageConfig, ImagePin, ImageResolver, Platform,
    ResolveError, ResolvedImage, RootFs, plan_source,
};

/// Resolves names from a map and records every call.
#[derive(Default)]
pub struct FakeResolver {
    pub images: BTreeMap<String, ImageConfig>,
    pub calls: RefCell<Vec<String>>,
}

/// What `rbuild import busybox.tar busybox:latest` gives: a config with a
/// platform and one layer, and no runtime config at all.
pub fn busybox_config() -> ImageConfig {
    serde_json::from_value(serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": null,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]},
        "history": [{"created_by": "Imported from -", "comment": "Imported from -"}]
    }))
    .unwrap()
}

impl FakeResolver {
    pub fn new() -> Self {
        let mut r = Self::default();
        r.add("busybox", busybox_config());
        r
    }

    pub fn add(&mut self, name: &str, cfg: ImageConfig) {
        self.images.insert(canonical(name), cfg);
    }

    /// Stores a built plan as an image (one fake diff id per new layer).
    pub fn add_plan(&mut self, name: &str, plan: &BuildPlan) {
        let mut cfg = plan.image.clone();
        let mut rootfs = RootFs::default();
        rootfs.diff_ids.clone_from(&cfg.rootfs.diff_ids);
        for (i, _) in plan.layer_vertices.iter().enumerate() {
            rootfs
                .diff_ids
                .push(rbuild_oci::Digest::parse(&format!("sha256:{:064x}", i + 2)).unwrap());
        }
        cfg.rootfs = rootfs;
        self.add(name, cfg);
    }
}

pub fn canonical(name: &str) -> String {
    let with_tag = if name.rsplit('/').next().unwrap_or(name).contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    };
    if with_tag.contains('/') {
        with_tag
    } else {
        format!("docker.io/library/{with_tag}")
    }
}

impl ImageResolver for FakeResolver {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<ResolvedImage, ResolveError> {
        self.calls.borrow_mut().push(reference.to_owned());
        let c = canonical(reference);
        match self.images.get(&c) {
            Some(cfg) => Ok(ResolvedImage {
                reference: c.clone(),
                pin: ImagePin::ImageId(format!("sha256:{:064x}", c.len())),
                config: cfg.clone(),
            }),
            None => Err(ResolveError(format!(
                "pull access denied, repository does not exist: {reference}"
            ))),
        }
    }
}

pub fn opts() -> BuildOptions {
    BuildOptions {
        platform: Platform::parse("linux/amd64").unwrap(),
        build_platform: Platform::parse("linux/amd64").unwrap(),
        ..BuildOptions::default()
    }
}

pub fn plan(src: &str) -> BuildPlan {
    plan_with(src, &opts())
}

pub fn plan_with(src: &str, o: &BuildOptions) -> BuildPlan {
    try_plan(src, o).unwrap_or_else(|e| panic!("plan failed: {e}"))
}

pub fn try_plan(src: &str, o: &BuildOptions) -> Result<BuildPlan, FrontendError> {
    plan_source(src, o, &FakeResolver::new())
}
