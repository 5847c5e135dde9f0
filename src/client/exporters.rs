//! `--output`, `--push` and `-t` as the exporters of a `Control/Solve`, converted the way
//! buildctl converts its `--output` (`cmd/buildctl/build/output.go`, `client/solve.go`).
//!
//! Each output becomes an `Exporter{type, attrs}` whose attributes are sent as given, minus
//! `dest`: the daemon owns the exporter and judges its keys. What stays here is where the
//! daemon's bytes land: a file for the tar-stream exporters (`oci`, `docker`, `tar`), a
//! directory for `local`. The exporter's index in the request is its id on the session's
//! `FileSend` calls. Two conversions are buildx's rather than buildctl's, because our local
//! `build` accepts them: `type=registry` is `type=image,push=true`, and `-t` names the image
//! outputs that have no `name=`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use memobuild_proto::control::Exporter;

use crate::output::{self, Output};

/// Where an exporter's output goes on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Nothing comes back (`image` pushes or stores on the daemon's side).
    None,
    /// A tar stream, written to this file (through a temporary file renamed at the end).
    File(PathBuf),
    /// An fsutil transfer into this directory; `delete` removes what the result lacks
    /// (`mode=delete`), otherwise existing files are kept (buildctl's default).
    Dir {
        /// The directory.
        path: PathBuf,
        /// `mode=delete`.
        delete: bool,
    },
}

/// One exporter of the solve request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// BuildKit's exporter type.
    pub kind: String,
    /// Its attributes, without `dest`.
    pub attrs: BTreeMap<String, String>,
    /// Where its bytes go.
    pub target: Target,
}

/// The exporters `--output` (each a CSV spec or a bare directory), `--push` and `-t` ask for,
/// in order.
pub fn exports(specs: &[String], push: bool, tags: &[String]) -> anyhow::Result<Vec<Export>> {
    let mut outputs = specs
        .iter()
        .map(|s| output::parse_fields(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if push {
        output::apply_push(&mut outputs, tags)?;
    }
    outputs.into_iter().map(|o| export(o, tags)).collect()
}

fn export(o: Output, tags: &[String]) -> anyhow::Result<Export> {
    let Output {
        mut kind,
        mut attrs,
        dest,
    } = o;
    if let Some(v) = attrs.get("output") {
        bail!("output={v} not supported for --output, you meant dest={v}?");
    }
    if kind == "registry" {
        kind = "image".into();
        attrs.insert("push".into(), "true".into());
    }
    if matches!(kind.as_str(), "image" | "oci" | "docker") && !tags.is_empty() {
        attrs.entry("name".into()).or_insert_with(|| tags.join(","));
    }
    let target = match kind.as_str() {
        "local" => Target::Dir {
            path: required(dest, &kind, "dest=DIR")?,
            delete: local_delete_mode(attrs.get("mode").map(String::as_str))?,
        },
        "tar" => Target::File(required(dest, &kind, "dest=FILE")?),
        "oci" | "docker" => {
            // buildctl's rule: anything but a valid false keeps the tar stream.
            let tar = !matches!(
                attrs.get("tar").map(|v| parse_go_bool(v)),
                Some(Some(false))
            );
            if !tar {
                bail!(
                    "output type={kind},tar=false is not supported with --addr (it needs a content store in the session); use a tar file"
                );
            }
            Target::File(required(dest, &kind, "dest=FILE")?)
        }
        _ => match dest {
            Some(d) => bail!("output {} is not supported by {kind} exporter", d.display()),
            None => Target::None,
        },
    };
    Ok(Export {
        kind,
        attrs,
        target,
    })
}

/// `dest`, which must be given and must not be stdout (stdout carries the image digest).
fn required(dest: Option<PathBuf>, kind: &str, what: &str) -> anyhow::Result<PathBuf> {
    match dest {
        Some(d) if d.as_os_str() == "-" => {
            bail!("output type={kind}: writing to stdout is not supported; give {what}")
        }
        Some(d) => Ok(d),
        None => bail!("output type={kind} needs {what}"),
    }
}

/// buildctl's `ParseLocalExporterMode`: `copy` (default) or `delete`.
fn local_delete_mode(mode: Option<&str>) -> anyhow::Result<bool> {
    match mode.map(|m| m.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "copy") => Ok(false),
        Some("delete") => Ok(true),
        Some(_) => bail!("invalid local exporter mode {:?}", mode.unwrap_or_default()),
    }
}

/// Go's `strconv.ParseBool`; `None` when it would fail.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The request's exporters, and the deprecated single-exporter fields (3 and 4) that buildctl
/// still fills with exporter #0 for daemons older than v0.13.
pub fn to_proto(exports: &[Export]) -> (Vec<Exporter>, String, BTreeMap<String, String>) {
    let exporters: Vec<Exporter> = exports
        .iter()
        .map(|e| Exporter {
            r#type: e.kind.clone(),
            attrs: e.attrs.clone(),
        })
        .collect();
    let (kind, attrs) = exporters
        .first()
        .map(|e| (e.r#type.clone(), e.attrs.clone()))
        .unwrap_or_default();
    (exporters, kind, attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str, push: bool, tags: &[&str]) -> anyhow::Result<Export> {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let mut v = exports(&[spec.to_string()], push, &tags)?;
        assert_eq!(v.len(), 1);
        Ok(v.remove(0))
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_outputs_keep_attrs_and_drop_dest() {
        let e = one(
            "type=oci,dest=out.tar,oci-mediatypes=false",
            false,
            &["app:1"],
        )
        .unwrap();
        assert_eq!(
            e,
            Export {
                kind: "oci".into(),
                attrs: attrs(&[("name", "app:1"), ("oci-mediatypes", "false")]),
                target: Target::File("out.tar".into()),
            }
        );
        let e = one(
            "type=tar,dest=fs.tar,platform-split=false",
            false,
            &["ignored"],
        )
        .unwrap();
        assert_eq!(e.attrs, attrs(&[("platform-split", "false")]));
        assert_eq!(e.target, Target::File("fs.tar".into()));
        let e = one("type=docker,dest=d.tar,name=x", false, &["y"]).unwrap();
        assert_eq!(e.attrs, attrs(&[("name", "x")]), "name= wins over -t");
    }

    #[test]
    fn local_outputs_and_modes() {
        let e = one("out", false, &[]).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.target),
            (
                "local",
                Target::Dir {
                    path: "out".into(),
                    delete: false
                }
            )
        );
        let e = one("type=local,dest=d,mode=delete", false, &[]).unwrap();
        assert_eq!(
            e.attrs,
            attrs(&[("mode", "delete")]),
            "mode goes to the daemon too"
        );
        assert!(matches!(e.target, Target::Dir { delete: true, .. }));
        let err = format!(
            "{:#}",
            one("type=local,dest=d,mode=move", false, &[]).unwrap_err()
        );
        assert!(
            err.contains("invalid local exporter mode \"move\""),
            "{err}"
        );
    }

    #[test]
    fn image_outputs_push_and_tags() {
        let e = one("type=image,name=r/a:1,push=true,unknown-key=1", false, &[]).unwrap();
        assert_eq!(
            e,
            Export {
                kind: "image".into(),
                attrs: attrs(&[("name", "r/a:1"), ("push", "true"), ("unknown-key", "1")]),
                target: Target::None,
            }
        );
        let e = one("type=registry", false, &["r/a:1", "r/a:2"]).unwrap();
        assert_eq!(e.kind, "image");
        assert_eq!(e.attrs, attrs(&[("name", "r/a:1,r/a:2"), ("push", "true")]));

        // --push alone: one image output named by -t.
        let v = exports(&[], true, &["r/a:1".into()]).unwrap();
        assert_eq!(
            v,
            vec![Export {
                kind: "image".into(),
                attrs: attrs(&[("name", "r/a:1"), ("push", "true")]),
                target: Target::None,
            }]
        );
        assert!(exports(&[], true, &[]).is_err());
        assert!(exports(&[], false, &["r/a:1".into()]).unwrap().is_empty());
    }

    #[test]
    fn dest_rules_as_buildctl() {
        let err = |s: &str| format!("{:#}", one(s, false, &[]).unwrap_err());
        assert!(err("type=local").contains("needs dest=DIR"));
        assert!(err("type=tar").contains("needs dest=FILE"));
        assert!(err("type=oci,dest=-").contains("stdout"));
        assert!(
            err("type=image,name=x,dest=d").contains("output d is not supported by image exporter")
        );
        assert!(err("type=oci,dest=o,tar=false").contains("tar=false"));
        assert!(err("type=local,output=d").contains("you meant dest=d"));
        // Not a valid boolean: buildctl keeps the tar stream.
        assert!(matches!(
            one("type=oci,dest=o,tar=maybe", false, &[]).unwrap().target,
            Target::File(_)
        ));
    }

    #[test]
    fn proto_carries_exporter_zero_twice() {
        let v = exports(
            &["type=oci,dest=a.tar".into(), "type=local,dest=b".into()],
            false,
            &["app".into()],
        )
        .unwrap();
        let (exporters, kind, first) = to_proto(&v);
        assert_eq!(exporters.len(), 2);
        assert_eq!(exporters[1].r#type, "local");
        assert_eq!(kind, "oci");
        assert_eq!(first, attrs(&[("name", "app")]));
        assert!(!exporters[0].attrs.contains_key("dest"));
        let (none, kind, attrs) = to_proto(&[]);
        assert!(none.is_empty() && kind.is_empty() && attrs.is_empty());
    }
}
