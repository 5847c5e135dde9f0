//! [`BuildOptions::from_frontend_attrs`]: BuildKit's `dockerfile.v0` frontend attributes
//! (`buildctl build --opt K=V`, `docker buildx build`; `SolveRequest.FrontendAttrs` /
//! `LLBBridge.Solve.FrontendOpt`) to [`BuildOptions`], parsed as `dockerui/config.go`,
//! `dockerui/attr.go`, `dockerui/context.go` and `dockerui/namedcontext.go` parse them.
//!
//! Keys read (others are returned in [`ParsedAttrs::ignored`]):
//!
//! | key | becomes |
//! |---|---|
//! | `filename` | `dockerfile_name` (default `Dockerfile`) |
//! | `target` | `target` |
//! | `platform` | `platform`: one `os/arch[/variant]`; a list is refused (multi-platform) |
//! | `build-arg:K` | `build_args[K]` |
//! | `label:K` | `labels[K]` |
//! | `context:NAME` | `named_contexts[NAME]` ([`NamedContext::parse`]) |
//! | `input-metadata:NAME` | `input_configs[NAME]`: the `containerimage.config` of the JSON map |
//! | `sharedkey:localdir:NAME` | the `shared_key` of the local named context `NAME` |
//! | `local-sessionid:NAME` | `local_sessions[NAME]`: the session serving the local `NAME` |
//! | `add-hosts` | `extra_hosts`: CSV of `host=ip` (buildx's `host:ip` too) |
//! | `no-cache` | `no_cache`: empty = all stages, else a comma list of stage names |
//! | `image-resolve-mode` | `image_resolve_mode`: `default`, `pull`, `local` |
//! | `force-network-mode` | `network_mode`: `sandbox`, `none`, `host` |
//! | `contextkey` | which attr may hold a remote main context (default `context`) |
//! | `context` (or what `contextkey` names) | refused when set: the main context must be the local `context` |
//!
//! As in BuildKit, `contextkey` does not rename the local source: the main context is always the
//! local directory `context` (`context_name`). Keys a caller typically handles itself and
//! finds in `ignored`: `dockerfilekey` (the local holding the Dockerfile), `cache-imports`,
//! `cache-from`, `attest:*`, `frontend.caps`; keys not supported yet: `shm-size`, `ulimit`,
//! `cgroup-parent`, `hostname`, `multi-platform`, `input:*` (buildx's notes on where an input
//! came from), resource
//! limits (`memory`, `cpu*`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::config::ImageConfig;
use crate::lower::csv_fields;
use crate::named_context::NamedContext;
use crate::options::{BuildOptions, ImageResolveMode, NetworkMode, NoCache, OptionsError};
use crate::platform::Platform;

const BUILD_ARG_PREFIX: &str = "build-arg:";
const LABEL_PREFIX: &str = "label:";
const CONTEXT_PREFIX: &str = "context:";
const SHARED_KEY_PREFIX: &str = "sharedkey:localdir:";
const LOCAL_SESSION_PREFIX: &str = "local-sessionid:";
const INPUT_METADATA_PREFIX: &str = "input-metadata:";

/// [`BuildOptions`] read from frontend attributes, and the keys that were not used.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedAttrs {
    /// The options.
    pub options: BuildOptions,
    /// Keys not read (unknown, handled by the caller, or not supported yet), sorted; the
    /// caller may warn about them.
    pub ignored: Vec<String>,
}

impl BuildOptions {
    /// Reads BuildKit's `dockerfile.v0` frontend attributes (table in the module docs);
    /// `platform` is the target platform when the attrs name none (the worker's).
    pub fn from_frontend_attrs(
        attrs: &BTreeMap<String, String>,
        platform: Platform,
    ) -> Result<ParsedAttrs, OptionsError> {
        let mut o = BuildOptions::new(platform);
        let mut ignored = Vec::new();
        let mut shared_keys = Vec::new();
        let context_key = attrs.get("contextkey").map_or("context", String::as_str);
        for (k, v) in attrs {
            if let Some(name) = k.strip_prefix(BUILD_ARG_PREFIX) {
                o.build_args.insert(name.to_owned(), v.clone());
            } else if let Some(name) = k.strip_prefix(LABEL_PREFIX) {
                o.labels.insert(name.to_owned(), v.clone());
            } else if let Some(name) = k.strip_prefix(CONTEXT_PREFIX) {
                let nc = NamedContext::parse(v).map_err(|cause| OptionsError::NamedContext {
                    name: name.to_owned(),
                    cause,
                })?;
                o.named_contexts.insert(name.to_owned(), nc);
            } else if let Some(name) = k.strip_prefix(INPUT_METADATA_PREFIX) {
                if let Some(config) = parse_input_metadata(name, v)? {
                    o.input_configs.insert(name.to_owned(), config);
                }
            } else if let Some(name) = k.strip_prefix(LOCAL_SESSION_PREFIX) {
                if !v.is_empty() {
                    o.local_sessions.insert(name.to_owned(), v.clone());
                }
            } else if let Some(name) = k.strip_prefix(SHARED_KEY_PREFIX) {
                shared_keys.push((k, name, v));
            } else if k == context_key {
                if !v.is_empty() {
                    if !is_context_url(v) {
                        return Err(OptionsError::RemoteContext {
                            key: k.clone(),
                            value: v.clone(),
                        });
                    }
                    o.context_url = Some(v.clone());
                }
            } else {
                match k.as_str() {
                    "filename" if !v.is_empty() => o.dockerfile_name = v.clone(),
                    "filename" | "contextkey" => {}
                    "target" => o.target = Some(v.clone()).filter(|t| !t.is_empty()),
                    "platform" => {
                        if !v.is_empty() {
                            o.platform = parse_single_platform(v)?;
                        }
                    }
                    "add-hosts" => o.extra_hosts = parse_extra_hosts(v)?,
                    "no-cache" => {
                        o.no_cache = if v.is_empty() {
                            NoCache::All
                        } else {
                            NoCache::Stages(v.split(',').map(str::to_owned).collect())
                        }
                    }
                    "image-resolve-mode" => o.image_resolve_mode = ImageResolveMode::parse(v)?,
                    "force-network-mode" => o.network_mode = NetworkMode::parse(v)?,
                    _ => ignored.push(k.clone()),
                }
            }
        }
        for (k, name, v) in shared_keys {
            match o.named_contexts.get_mut(name) {
                Some(NamedContext::Local { shared_key, .. }) => *shared_key = v.clone(),
                _ => ignored.push(k.clone()),
            }
        }
        ignored.sort();
        Ok(ParsedAttrs {
            options: o,
            ignored,
        })
    }
}

/// The image config in an `input-metadata:NAME` value: a JSON object whose values are base64
/// (Go's `map[string][]byte`), of which `containerimage.config` is read.
fn parse_input_metadata(name: &str, v: &str) -> Result<Option<ImageConfig>, OptionsError> {
    use base64::Engine as _;
    let bad = |reason: String| OptionsError::BadInputMetadata {
        name: name.to_owned(),
        reason,
    };
    let m: BTreeMap<String, String> =
        serde_json::from_str(v).map_err(|e| bad(format!("not a JSON object of strings: {e}")))?;
    let Some(encoded) = m.get("containerimage.config") else {
        return Ok(None);
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| bad(format!("`containerimage.config` is not base64: {e}")))?;
    serde_json::from_slice(&raw).map(Some).map_err(|e| {
        bad(format!(
            "`containerimage.config` is not an image config: {e}"
        ))
    })
}

/// Whether `v` is a context URL the caller can fetch: a git repository or an `http(s)://`
/// download (BuildKit's `dockerui` also takes `input:` contexts, which come from another
/// frontend's result).
fn is_context_url(v: &str) -> bool {
    v.starts_with("http://")
        || v.starts_with("https://")
        || v.starts_with("git://")
        || v.starts_with("git@")
        || v.starts_with("ssh://")
        || v.starts_with("github.com/")
}

/// One platform; BuildKit's list form (`linux/amd64,linux/arm64`) is a multi-platform build.
fn parse_single_platform(v: &str) -> Result<Platform, OptionsError> {
    if v.contains(',') {
        return Err(OptionsError::MultiPlatform(v.to_owned()));
    }
    Platform::parse(v.trim()).ok_or_else(|| OptionsError::BadPlatform(v.to_owned()))
}

/// `add-hosts`: CSV fields `host=ip`, lower-cased as BuildKit's `parseExtraHosts` does; also
/// `host:ip` and `[ipv6]` as buildx's `--add-host` accepts them.
pub(crate) fn parse_extra_hosts(v: &str) -> Result<Vec<(String, String)>, OptionsError> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    csv_fields(v)
        .iter()
        .map(|field| {
            let lower = field.to_ascii_lowercase();
            let (host, ip) = lower
                .split_once('=')
                .or_else(|| lower.split_once(':'))
                .ok_or_else(|| OptionsError::BadExtraHost {
                    entry: field.clone(),
                    reason: "expected host=ip".into(),
                })?;
            extra_host(host, ip).map_err(|reason| OptionsError::BadExtraHost {
                entry: field.clone(),
                reason,
            })
        })
        .collect()
}

/// A validated entry: non-empty host, IP printed as Go's `net.IP.String` prints it (what
/// BuildKit's `llb.AddExtraHost` puts in the op).
pub(crate) fn extra_host(host: &str, ip: &str) -> Result<(String, String), String> {
    if host.is_empty() {
        return Err("empty host name".into());
    }
    let bare = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    let parsed: IpAddr = bare
        .parse()
        .map_err(|_| format!("failed to parse IP `{ip}`"))?;
    let canonical = match parsed {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    };
    Ok((host.to_owned(), canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<ParsedAttrs, OptionsError> {
        let attrs: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        BuildOptions::from_frontend_attrs(&attrs, amd64())
    }

    fn opts(pairs: &[(&str, &str)]) -> BuildOptions {
        parse(pairs).expect("attrs parse").options
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        parse(pairs).expect_err("attrs are refused").to_string()
    }

    #[test]
    fn no_attrs_are_the_defaults() {
        let p = parse(&[]).expect("parses");
        assert_eq!(p.options, BuildOptions::new(amd64()));
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn filename_and_target() {
        let o = opts(&[("filename", "sub/Dockerfile.dev"), ("target", "test")]);
        assert_eq!(o.dockerfile_name, "sub/Dockerfile.dev");
        assert_eq!(o.target.as_deref(), Some("test"));
        let o = opts(&[("filename", ""), ("target", "")]);
        assert_eq!(o.dockerfile_name, "Dockerfile");
        assert_eq!(o.target, None);
    }

    #[test]
    fn build_args_and_labels() {
        let o = opts(&[
            ("build-arg:VERSION", "1.2"),
            ("build-arg:EMPTY", ""),
            ("label:org.opencontainers.image.title", "app"),
        ]);
        assert_eq!(o.build_args["VERSION"], "1.2");
        assert_eq!(o.build_args["EMPTY"], "");
        assert_eq!(o.labels["org.opencontainers.image.title"], "app");
        assert_eq!(o.labels.len(), 1);
    }

    #[test]
    fn platform_single_only() {
        assert_eq!(
            opts(&[("platform", "linux/arm/v7")]).platform,
            Platform::new("linux", "arm", Some("v7"))
        );
        assert_eq!(opts(&[("platform", "")]).platform, amd64());
        assert_eq!(
            err(&[("platform", "linux/amd64,linux/arm64")]),
            "multi-platform builds are not supported yet: `platform=linux/amd64,linux/arm64` names several platforms; build one platform at a time"
        );
        assert!(err(&[("platform", "linux")]).starts_with("invalid platform `linux`"));
    }

    #[test]
    fn named_contexts_and_shared_keys() {
        let o = opts(&[
            ("context:base", "docker-image://alpine:3.20"),
            ("context:assets", "local:assets"),
            ("sharedkey:localdir:assets", "assets:node1"),
        ]);
        assert_eq!(
            o.named_contexts["base"],
            NamedContext::Image {
                reference: "alpine:3.20".into()
            }
        );
        assert_eq!(
            o.named_contexts["assets"],
            NamedContext::Local {
                name: "assets".into(),
                shared_key: "assets:node1".into(),
                excludes: Vec::new(),
            }
        );
        let p = parse(&[("sharedkey:localdir:nothing", "x")]).expect("parses");
        assert_eq!(p.ignored, vec!["sharedkey:localdir:nothing"]);
        assert!(
            err(&[("context:img", "oci-layout://s@sha256:aa")])
                .starts_with("named context `img`: unsupported context source `oci-layout`")
        );
    }

    #[test]
    fn local_session_ids() {
        let o = opts(&[
            ("local-sessionid:context", "s2"),
            ("local-sessionid:empty", ""),
        ]);
        assert_eq!(o.local_sessions.len(), 1);
        assert_eq!(o.session_for("context"), Some("s2"));
        let o = BuildOptions {
            session_id: Some("s1".into()),
            ..o
        };
        assert_eq!(o.session_for("context"), Some("s2"));
        assert_eq!(o.session_for("dockerfile"), Some("s1"));
    }

    #[test]
    fn add_hosts() {
        let o = opts(&[(
            "add-hosts",
            "db=10.0.0.2,Cache:10.0.0.3,v6=[::1],\"mapped=::ffff:1.2.3.4\"",
        )]);
        assert_eq!(
            o.extra_hosts,
            vec![
                ("db".to_owned(), "10.0.0.2".to_owned()),
                ("cache".to_owned(), "10.0.0.3".to_owned()),
                ("v6".to_owned(), "::1".to_owned()),
                ("mapped".to_owned(), "1.2.3.4".to_owned()),
            ]
        );
        assert_eq!(opts(&[("add-hosts", "")]).extra_hosts, Vec::new());
        assert_eq!(
            err(&[("add-hosts", "db")]),
            "invalid add-hosts entry `db`: expected host=ip"
        );
        assert_eq!(
            err(&[("add-hosts", "db=10.0.0")]),
            "invalid add-hosts entry `db=10.0.0`: failed to parse IP `10.0.0`"
        );
        assert!(err(&[("add-hosts", "=1.2.3.4")]).ends_with("empty host name"));
    }

    #[test]
    fn no_cache() {
        assert_eq!(opts(&[]).no_cache, NoCache::Off);
        assert_eq!(opts(&[("no-cache", "")]).no_cache, NoCache::All);
        let o = opts(&[("no-cache", "build,Test")]);
        assert_eq!(
            o.no_cache,
            NoCache::Stages(vec!["build".into(), "Test".into()])
        );
        assert!(o.no_cache.applies_to("test"));
        assert!(!o.no_cache.applies_to(""));
        assert!(NoCache::All.applies_to(""));
        assert!(!NoCache::Off.applies_to("build"));
    }

    #[test]
    fn resolve_and_network_modes() {
        assert_eq!(
            opts(&[("image-resolve-mode", "pull")]).image_resolve_mode,
            ImageResolveMode::Pull
        );
        assert_eq!(
            opts(&[("image-resolve-mode", "local")]).image_resolve_mode,
            ImageResolveMode::Local
        );
        assert_eq!(
            opts(&[("image-resolve-mode", "default")]).image_resolve_mode,
            ImageResolveMode::Default
        );
        assert_eq!(
            err(&[("image-resolve-mode", "always")]),
            "invalid image-resolve-mode `always`: expected default, pull or local"
        );
        for (v, m) in [
            ("none", NetworkMode::None),
            ("host", NetworkMode::Host),
            ("sandbox", NetworkMode::Sandbox),
            ("default", NetworkMode::Sandbox),
        ] {
            assert_eq!(opts(&[("force-network-mode", v)]).network_mode, m, "{v}");
        }
        assert_eq!(
            err(&[("force-network-mode", "bridge")]),
            "invalid force-network-mode `bridge`: expected sandbox, none or host"
        );
    }

    #[test]
    fn contextkey_names_the_remote_context_attr() {
        // The local name stays `context`, as in BuildKit.
        let o = opts(&[("contextkey", "src"), ("context", "")]);
        assert_eq!(o.context_name, "context");
        assert_eq!(
            opts(&[("context", "https://github.com/moby/buildkit.git")]).context_url,
            Some("https://github.com/moby/buildkit.git".to_owned())
        );
        assert_eq!(
            opts(&[("contextkey", "src"), ("src", "git://h/r")]).context_url,
            Some("git://h/r".to_owned())
        );
        assert_eq!(
            err(&[("context", "input:other")]),
            "remote build contexts are not supported yet: `context=input:other`; send the context as the local directory `context`"
        );
        // With another contextkey, `context` itself is just an unknown key.
        let p = parse(&[("contextkey", "src"), ("context", "x")]).expect("parses");
        assert_eq!(p.ignored, vec!["context"]);
    }

    #[test]
    fn unknown_keys_are_returned_sorted() {
        let p = parse(&[
            ("shm-size", "1024"),
            ("dockerfilekey", "dockerfile"),
            ("attest:provenance", "mode=min"),
            ("target", "x"),
        ])
        .expect("parses");
        assert_eq!(
            p.ignored,
            vec!["attest:provenance", "dockerfilekey", "shm-size"]
        );
    }

    #[test]
    fn input_metadata_gives_the_input_image_config() {
        use base64::Engine as _;
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let encoded = base64::engine::general_purpose::STANDARD.encode(config);
        let md =
            format!(r#"{{"containerimage.config":"{encoded}","containerimage.buildinfo":"e30="}}"#);
        let p =
            parse(&[("context:base", "input:base"), ("input-metadata:base", &md)]).expect("parses");
        let c = &p.options.input_configs["base"];
        assert_eq!(c.config.env, vec!["A=1".to_string()]);
        assert_eq!(c.config.working_dir, "/w");
        assert_eq!(
            p.options.named_contexts["base"],
            NamedContext::Input {
                name: "base".into()
            }
        );
        // Metadata without a config is no config.
        let p = parse(&[("input-metadata:x", r#"{"containerimage.buildinfo":"e30="}"#)])
            .expect("parses");
        assert!(p.options.input_configs.is_empty());
        assert!(
            err(&[("input-metadata:x", "[1]")])
                .starts_with("invalid `input-metadata:x`: not a JSON object")
        );
        assert!(
            err(&[("input-metadata:x", r#"{"containerimage.config":"!!"}"#)])
                .contains("is not base64")
        );
    }
}
