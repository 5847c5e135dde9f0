//! Named contexts (`context:NAME=VALUE`, buildx `--build-context NAME=VALUE`): what a value may
//! be, and which names a Dockerfile looks up, as BuildKit's `dockerui/namedcontext.go` and
//! `dockerfile2llb/convert.go` do.
//!
//! Look-ups: a stage `FROM … AS NAME` is replaced by the context `NAME` (its instructions are not
//! run); `FROM X`, `COPY --from=X` and `RUN --mount=from=X` where `X` is no stage look up the
//! short form of the image reference (`docker.io/library/alpine:latest` → `alpine`,
//! `alpine:3.20` stays). For each name, `NAME::os/arch[/variant]` (the stage's platform) is
//! tried before `NAME`.

use std::collections::BTreeMap;

use crate::lower::parse_git_ref;
use crate::platform::Platform;
use crate::reference::{familiar_name, normalize_image_ref};

/// What a named context stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// `docker-image://REF`: the image, resolved through the [`crate::ImageResolver`] (its
    /// config is the base config when it replaces a `FROM`). `docker-image://scratch` is an
    /// empty filesystem without config.
    Image {
        /// The reference as given (`alpine:3.20`, `127.0.0.1:5000/x@sha256:…`).
        reference: String,
    },
    /// `local:NAME`: the client directory `NAME` synced over the session (`local://NAME`).
    /// Used as a base, it is a scratch-based image holding those files.
    Local {
        /// The local source's name (FileSync `dir-name`).
        name: String,
        /// `sharedkey:localdir:CONTEXT` (buildx sends the directory's base name); part of the
        /// `local.sharedkeyhint` attr, `context:CONTEXT-<shared_key>`.
        shared_key: String,
        /// The directory's own `.dockerignore` patterns. BuildKit reads them from the
        /// directory; the frontend does no I/O, so the caller fills them in.
        excludes: Vec<String>,
    },
    /// `git://…`, `git@host:path`, or an `http(s)://` URL of a git repository (`#ref:subdir`
    /// as in `ADD`): the checkout.
    Git {
        /// The URL as given.
        url: String,
    },
    /// `http(s)://…` that is not a git repository: the download, as a file named `context`.
    Http {
        /// The URL.
        url: String,
    },
    /// `input:NAME`: the frontend input `NAME`, a definition the client solved before
    /// ([`crate::BuildOptions::inputs`]; buildx bake's `target:` contexts). Its image config is
    /// the `containerimage.config` of the `input-metadata:NAME` attr, when there is one.
    Input {
        /// The input's name.
        name: String,
    },
}

/// Why a named context's value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Not `SCHEME:VALUE`, or a malformed value.
    #[error("invalid context `{value}`: {reason}")]
    Invalid {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A source BuildKit knows and MemoBuild does not build from.
    #[error("unsupported context source `{scheme}`: {reason}")]
    Unsupported {
        /// `oci-layout`, `input`, `target`, …
        scheme: String,
        /// Why, and what to use instead.
        reason: String,
    },
}

impl NamedContext {
    /// Parses a `context:NAME` value: `docker-image://REF`, `local:NAME`, `git://…`, `git@…`,
    /// `http(s)://…`, `input:NAME`. `oci-layout://` and `target:` are refused with a reason.
    pub fn parse(value: &str) -> Result<Self, ContextError> {
        let invalid = |reason: &str| ContextError::Invalid {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = value.split_once(':') else {
            return Err(invalid(
                "expected SCHEME:VALUE, e.g. `docker-image://alpine` or `local:NAME`",
            ));
        };
        // As BuildKit: `git@host:path` is a git URL without a scheme.
        let scheme = if scheme.starts_with("git@") {
            "git"
        } else {
            scheme
        };
        match scheme {
            "docker-image" => {
                let reference = rest.strip_prefix("//").unwrap_or(rest);
                normalize_image_ref(reference).map_err(|e| invalid(&e.reason))?;
                Ok(Self::Image {
                    reference: reference.to_owned(),
                })
            }
            "local" => {
                if rest.is_empty() {
                    return Err(invalid("empty local name"));
                }
                if rest.starts_with('/') {
                    return Err(invalid(
                        "a local context is `local:NAME`, the name of a directory the client sends",
                    ));
                }
                Ok(Self::Local {
                    name: rest.to_owned(),
                    shared_key: String::new(),
                    excludes: Vec::new(),
                })
            }
            "git" => match parse_git_ref(value) {
                Some(_) => Ok(Self::Git {
                    url: value.to_owned(),
                }),
                None => Err(invalid("not a git repository URL")),
            },
            "http" | "https" => Ok(if parse_git_ref(value).is_some() {
                Self::Git {
                    url: value.to_owned(),
                }
            } else {
                Self::Http {
                    url: value.to_owned(),
                }
            }),
            "oci-layout" => Err(ContextError::Unsupported {
                scheme: scheme.to_owned(),
                reason: "OCI layout stores on the client are out of scope for now; push the image to a registry and use `docker-image://REF`".into(),
            }),
            "input" => {
                if rest.is_empty() {
                    return Err(invalid("empty input name"));
                }
                Ok(Self::Input {
                    name: rest.to_owned(),
                })
            }
            other => Err(ContextError::Unsupported {
                scheme: other.to_owned(),
                reason: "expected docker-image://, local:, git or http(s):// (`target:` is resolved by buildx bake, not by the frontend)".into(),
            }),
        }
    }
}

/// The named context for `name` on `platform`: the key found (`NAME::platform` first, then
/// `NAME`) and its value.
pub(crate) fn lookup<'a>(
    contexts: &'a BTreeMap<String, NamedContext>,
    name: &str,
    platform: &Platform,
) -> Option<(&'a str, &'a NamedContext)> {
    if contexts.is_empty() {
        return None;
    }
    let with_platform = format!("{name}::{platform}");
    contexts
        .get_key_value(with_platform.as_str())
        .or_else(|| contexts.get_key_value(name))
        .map(|(k, v)| (k.as_str(), v))
}

/// The named context replacing the stage `stage_name`; BuildKit never looks up `scratch` or
/// `context` as stage names.
pub(crate) fn lookup_stage<'a>(
    contexts: &'a BTreeMap<String, NamedContext>,
    stage_name: &str,
    platform: &Platform,
) -> Option<&'a str> {
    if stage_name.eq_ignore_ascii_case("scratch") || stage_name.eq_ignore_ascii_case("context") {
        return None;
    }
    lookup(contexts, stage_name, platform).map(|(k, _)| k)
}

/// The named context replacing the image `reference` (as written, after expansion), looked up
/// by its short name. A reference that does not parse finds none (lowering reports it).
pub(crate) fn lookup_image<'a>(
    contexts: &'a BTreeMap<String, NamedContext>,
    reference: &str,
    platform: &Platform,
) -> Option<&'a str> {
    if contexts.is_empty() {
        return None;
    }
    let normalized = normalize_image_ref(reference).ok()?;
    lookup(contexts, &familiar_name(&normalized), platform).map(|(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> Result<NamedContext, ContextError> {
        NamedContext::parse(v)
    }

    #[test]
    fn parses_supported_sources() {
        assert_eq!(
            p("docker-image://alpine:3.20").expect("image"),
            NamedContext::Image {
                reference: "alpine:3.20".into()
            }
        );
        assert_eq!(
            p("docker-image:127.0.0.1:5000/x").expect("image without //"),
            NamedContext::Image {
                reference: "127.0.0.1:5000/x".into()
            }
        );
        assert_eq!(
            p("local:assets").expect("local"),
            NamedContext::Local {
                name: "assets".into(),
                shared_key: String::new(),
                excludes: Vec::new(),
            }
        );
        for git in [
            "git://h/r#main",
            "git@github.com:moby/buildkit.git",
            "https://github.com/moby/buildkit.git#v0.13.0",
        ] {
            assert_eq!(p(git).expect(git), NamedContext::Git { url: git.into() });
        }
        assert_eq!(
            p("https://example.com/ctx.tar").expect("http"),
            NamedContext::Http {
                url: "https://example.com/ctx.tar".into()
            }
        );
        assert_eq!(
            p("input:base").expect("input"),
            NamedContext::Input {
                name: "base".into()
            }
        );
    }

    #[test]
    fn refuses_unsupported_and_malformed_sources() {
        let msg = |v: &str| p(v).expect_err(v).to_string();
        assert!(
            msg("oci-layout://store@sha256:abc").starts_with(
                "unsupported context source `oci-layout`: OCI layout stores on the client are out of scope"
            ),
            "{}",
            msg("oci-layout://store@sha256:abc")
        );
        assert!(msg("input:").contains("empty input name"));
        assert!(msg("target:base").contains("resolved by buildx bake"));
        assert!(msg("target:base").contains("`target`"));
        assert!(msg("alpine").starts_with("invalid context `alpine`: expected SCHEME:VALUE"));
        assert_eq!(
            msg("docker-image://Alpine"),
            "invalid context `docker-image://Alpine`: repository name must be lowercase"
        );
        assert!(msg("local:").contains("empty local name"));
        assert!(msg("local://x").contains("`local:NAME`"));
        assert!(msg("git:foo").contains("not a git repository URL"));
    }

    #[test]
    fn lookups_try_the_platform_key_first_and_use_short_names() {
        let img = |r: &str| NamedContext::Image {
            reference: r.into(),
        };
        let amd = Platform::new("linux", "amd64", None);
        let arm = Platform::new("linux", "arm64", None);
        let ctx: BTreeMap<String, NamedContext> = [
            ("alpine".to_owned(), img("a")),
            ("alpine::linux/arm64".to_owned(), img("b")),
            ("alpine:3.20".to_owned(), img("c")),
            ("build".to_owned(), img("d")),
            ("context".to_owned(), img("e")),
        ]
        .into();
        assert_eq!(lookup_image(&ctx, "alpine", &amd), Some("alpine"));
        assert_eq!(
            lookup_image(&ctx, "docker.io/library/alpine:latest", &arm),
            Some("alpine::linux/arm64")
        );
        assert_eq!(lookup_image(&ctx, "alpine:3.20", &amd), Some("alpine:3.20"));
        assert_eq!(lookup_image(&ctx, "alpine:3.19", &amd), None);
        assert_eq!(lookup_image(&ctx, "Bad Ref", &amd), None);
        assert_eq!(lookup_stage(&ctx, "build", &amd), Some("build"));
        assert_eq!(lookup_stage(&ctx, "context", &amd), None);
    }
}
