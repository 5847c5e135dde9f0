//! `--output` specs, parsed as buildx parses them (`type=oci,dest=out.tar`, or a bare path meaning
//! `type=local,dest=PATH`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// One requested output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// An OCI image layout, as a tar file or (`tar=false`) a directory.
    Oci {
        /// Where to write it.
        dest: PathBuf,
        /// Tar file (true) or directory (false).
        tar: bool,
        /// Names to record in `index.json`.
        names: Vec<String>,
    },
}

/// Parses one `--output` value.
pub fn parse(spec: &str, tags: &[String]) -> anyhow::Result<OutputSpec> {
    let mut fields = BTreeMap::new();
    if !spec.contains('=') {
        bail!("invalid output `{spec}`: type=local is not supported yet; use type=oci,dest=FILE");
    }
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("invalid output `{spec}`: `{part}` is not KEY=VALUE"))?;
        fields.insert(k.trim().to_lowercase(), v.trim().to_string());
    }
    let ty = fields
        .remove("type")
        .with_context(|| format!("invalid output `{spec}`: missing type="))?;
    let take_bool =
        |fields: &mut BTreeMap<String, String>, key: &str, default: bool| -> anyhow::Result<bool> {
            match fields.remove(key).as_deref() {
                None => Ok(default),
                Some("true") | Some("1") | Some("") => Ok(true),
                Some("false") | Some("0") => Ok(false),
                Some(v) => bail!("invalid output `{spec}`: {key}={v} is not a boolean"),
            }
        };
    let out = match ty.as_str() {
        "oci" => {
            let dest = fields
                .remove("dest")
                .with_context(|| format!("invalid output `{spec}`: type=oci needs dest=FILE"))?;
            let tar = take_bool(&mut fields, "tar", true)?;
            let mut names: Vec<String> = match fields.remove("name") {
                Some(n) => n.split(';').map(str::to_string).collect(),
                None => Vec::new(),
            };
            if names.is_empty() {
                names = tags.to_vec();
            }
            OutputSpec::Oci {
                dest: PathBuf::from(dest),
                tar,
                names,
            }
        }
        other => {
            bail!("invalid output `{spec}`: type={other} is not supported yet (supported: oci)")
        }
    };
    if let Some(k) = fields.keys().next() {
        bail!("invalid output `{spec}`: unknown key `{k}`");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_tar_and_dir() {
        assert_eq!(
            parse("type=oci,dest=out.tar", &["a:1".into()]).unwrap(),
            OutputSpec::Oci {
                dest: "out.tar".into(),
                tar: true,
                names: vec!["a:1".into()]
            }
        );
        assert_eq!(
            parse("type=oci,dest=d,tar=false,name=x", &[]).unwrap(),
            OutputSpec::Oci {
                dest: "d".into(),
                tar: false,
                names: vec!["x".into()]
            }
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            parse("type=oci", &[])
                .unwrap_err()
                .to_string()
                .contains("dest")
        );
        assert!(
            parse("type=weird,dest=x", &[])
                .unwrap_err()
                .to_string()
                .contains("weird")
        );
        assert!(
            parse("type=oci,dest=x,tar=maybe", &[])
                .unwrap_err()
                .to_string()
                .contains("boolean")
        );
        assert!(
            parse("type=oci,dest=x,bogus=1", &[])
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
    }
}
