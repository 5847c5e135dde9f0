//! `memobuild_frontend::build` (parse + lower) on arbitrary UTF-8 with a fake resolver: it
//! returns a Definition or an error, never panics. The resolver fails for references containing
//! `missing` and gives images whose names contain `onbuild` ONBUILD triggers, so both paths are
//! reachable from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memobuild_frontend::{BuildOptions, ImageResolver, Platform, ResolvedImage};

struct FakeResolver;

impl ImageResolver for FakeResolver {
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, String> {
        if reference.contains("missing") {
            return Err(format!("{reference}: not found"));
        }
        let onbuild: &[&str] = if reference.contains("onbuild") {
            &["RUN echo triggered", "COPY . /src", "ENV FROM_TRIGGER=1"]
        } else {
            &[]
        };
        let config = serde_json::json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/w",
                "User": "1000:1000",
                "OnBuild": onbuild,
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "b".repeat(64))]},
        });
        Ok(ResolvedImage {
            digest: format!("sha256:{}", "a".repeat(64)),
            config: serde_json::to_vec(&config).map_err(|e| e.to_string())?,
        })
    }
}

fuzz_target!(|dockerfile: &str| {
    let mut opts = BuildOptions::new(Platform::new("linux", "amd64", None));
    opts.build_args
        .insert("REGISTRY".into(), "127.0.0.1:5000".into());
    opts.dockerignore = vec!["*.log".into(), "!keep.log".into()];
    let _ = memobuild_frontend::build(dockerfile, &opts, &FakeResolver);
});
