//! `--output` specs, parsed as buildx parses them (`type=oci,dest=out.tar`, or a bare path
//! meaning `type=local,dest=PATH`), and `--push`. Each becomes BuildKit's `(type, attrs)` pair,
//! read by the worker's [`ExporterSpec::from_attrs`], plus the `dest` the client keeps.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use memobuild_worker::export::compression::Compression;
use memobuild_worker::export::sink::HostSink;
use memobuild_worker::export::spec::{ExporterSpec, ImageOptions};

/// One requested output: BuildKit's exporter type and attributes, and where its bytes go on
/// this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exporter type (`oci`, `image`, …).
    pub kind: String,
    /// Its attributes, without `dest`.
    pub attrs: BTreeMap<String, String>,
    /// `dest=`: the file or directory it writes.
    pub dest: Option<PathBuf>,
}

impl Output {
    /// The exporter as the worker reads it, with `tags` (`-t`) as names where the output has
    /// none. Unknown keys are refused (a typo must not silently change an output).
    pub fn spec(&self, tags: &[String]) -> anyhow::Result<ExporterSpec> {
        let mut attrs = self.attrs.clone();
        let named = matches!(
            self.kind.as_str(),
            "image" | "registry" | "oci" | "docker" | "containerd"
        );
        if named && !tags.is_empty() && !attrs.contains_key("name") {
            attrs.insert("name".into(), tags.join(","));
        }
        let parsed = ExporterSpec::from_attrs(&self.kind, &attrs).map_err(|e| {
            match e.message.contains("name=NAME") {
                true => anyhow::anyhow!("{e} (or -t NAME)"),
                false => e.into(),
            }
        })?;
        if let Some(k) = parsed.unknown.first() {
            bail!("invalid output type={}: unknown key `{k}`", self.kind);
        }
        let spec = parsed.spec;
        match &spec {
            s if (s.is_file() || s.is_dir()) && self.dest.is_none() => {
                let what = if s.is_dir() { "DIR" } else { "FILE" };
                let extra = if matches!(s, ExporterSpec::Docker { .. }) {
                    " (loading into a Docker engine is not supported)"
                } else {
                    ""
                };
                bail!(
                    "invalid output type={}: needs dest={what}{extra}",
                    self.kind
                )
            }
            _ => {}
        }
        Ok(spec)
    }
}

/// Splits on commas outside double quotes, dropping the quotes, as buildx reads its CSV.
fn split_csv(spec: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        bail!("invalid output `{spec}`: unbalanced `\"`");
    }
    out.push(cur);
    Ok(out)
}

/// Parses one `--output` value and checks it against what this machine's exporters accept.
pub fn parse(spec: &str) -> anyhow::Result<Output> {
    let out = parse_fields(spec)?;
    // Checked now, so a bad spec fails before anything is built.
    out.spec(&["check:latest".into()])
        .with_context(|| format!("invalid output `{spec}`"))?;
    Ok(out)
}

/// Parses one `--output` value into type, attributes and `dest`, without judging them: a
/// remote daemon (`build --addr`) has exporters and keys of its own.
pub fn parse_fields(spec: &str) -> anyhow::Result<Output> {
    if !spec.contains('=') {
        // As buildx: a bare value is a directory, but several comma-separated fields without
        // `KEY=` are a mistake (`--output ',,,'` must not create a directory named `,,,`).
        if spec.contains(',') || spec.trim().is_empty() {
            bail!("invalid output `{spec}`: expected type=TYPE,dest=PATH or a directory path");
        }
        if spec == "-" {
            bail!("invalid output `-`: writing to stdout is not supported; use type=oci,dest=FILE");
        }
        return Ok(Output {
            kind: "local".into(),
            attrs: BTreeMap::new(),
            dest: Some(PathBuf::from(spec)),
        });
    }
    let mut fields = BTreeMap::new();
    for part in split_csv(spec)? {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("invalid output `{spec}`: `{part}` is not KEY=VALUE"))?;
        fields.insert(k.trim().to_lowercase(), v.trim().to_string());
    }
    let kind = fields
        .remove("type")
        .with_context(|| format!("invalid output `{spec}`: missing type="))?;
    let dest = fields
        .remove("dest")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    Ok(Output {
        kind,
        attrs: fields,
        dest,
    })
}

/// `--push`: pushes the `type=image` outputs, or adds one pushing the `-t` names (buildx's
/// `--push` is `--output type=registry`).
pub fn apply_push(outputs: &mut Vec<Output>, tags: &[String]) -> anyhow::Result<()> {
    let mut found = false;
    for o in outputs.iter_mut() {
        if o.kind == "image" || o.kind == "registry" {
            if !o.attrs.contains_key("name") && tags.is_empty() {
                bail!("--push: the type=image output has no name (give name=NAME or -t NAME)");
            }
            o.attrs.insert("push".into(), "true".into());
            found = true;
        }
    }
    if !found {
        if tags.is_empty() {
            bail!("--push needs an image name: give -t NAME");
        }
        outputs.push(Output {
            kind: "image".into(),
            attrs: BTreeMap::from([("push".to_string(), "true".to_string())]),
            dest: None,
        });
    }
    Ok(())
}

/// The exporters of `outputs` (names from `tags` where missing, every name checked) and the
/// sink writing their files.
pub fn exporters(
    outputs: &[Output],
    tags: &[String],
) -> anyhow::Result<(Vec<ExporterSpec>, HostSink)> {
    let mut specs = Vec::new();
    let mut sink = HostSink::new();
    for (i, o) in outputs.iter().enumerate() {
        let spec = o.spec(tags)?;
        if let ExporterSpec::Image { image, .. } = &spec {
            for n in &image.names {
                memobuild_worker::registry::normalize_reference(n)
                    .with_context(|| format!("invalid image name `{n}`"))?;
            }
        }
        if let Some(d) = &o.dest {
            sink.insert(i, d.clone());
        }
        specs.push(spec);
    }
    Ok((specs, sink))
}

/// The default image options, for tests and `--push` outputs.
#[allow(dead_code)]
fn default_image(names: &[&str]) -> ImageOptions {
    ImageOptions {
        names: names.iter().map(|n| n.to_string()).collect(),
        oci_mediatypes: true,
        compression: Compression::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_worker::export::compression::Algorithm;

    fn spec(s: &str, tags: &[&str]) -> anyhow::Result<ExporterSpec> {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        parse(s)?.spec(&tags)
    }

    #[test]
    fn oci_tar_and_dir() {
        let o = parse("type=oci,dest=out.tar").unwrap();
        assert_eq!(o.dest.as_deref(), Some(std::path::Path::new("out.tar")));
        assert_eq!(
            o.spec(&["a:1".into()]).unwrap(),
            ExporterSpec::Oci {
                image: default_image(&["a:1"]),
                tar: true
            }
        );
        let mut image = default_image(&["x"]);
        image.oci_mediatypes = false;
        assert_eq!(
            spec("type=oci,dest=d,tar=false,name=x,oci-mediatypes=false", &[]).unwrap(),
            ExporterSpec::Oci { image, tar: false }
        );
    }

    #[test]
    fn local_docker_and_bare_paths() {
        let o = parse("out/dir").unwrap();
        assert_eq!((o.kind.as_str(), o.dest), ("local", Some("out/dir".into())));
        assert_eq!(
            spec("type=local,dest=x", &["ignored:1"]).unwrap(),
            ExporterSpec::Local
        );
        assert_eq!(
            spec("type=docker,dest=img.tar", &["a:1", "b:2"]).unwrap(),
            ExporterSpec::Docker {
                image: default_image(&["a:1", "b:2"])
            }
        );
        assert!(parse("-").is_err());
        assert!(parse(",,,").is_err());
        assert!(parse("").is_err());
        assert!(format!("{:#}", parse("type=local").unwrap_err()).contains("dest=DIR"));
        assert!(parse("type=docker").is_err());
        assert!(format!("{:#}", parse("type=tar").unwrap_err()).contains("dest=FILE"));
    }

    #[test]
    fn image_outputs_and_push() {
        let mut image = default_image(&["r/a:1", "r/b:1"]);
        image.oci_mediatypes = false;
        assert_eq!(
            spec(
                r#"type=image,"name=r/a:1,r/b:1",push=true,oci-mediatypes=false"#,
                &[]
            )
            .unwrap(),
            ExporterSpec::Image {
                image,
                push: true,
                insecure: false,
            }
        );
        assert_eq!(
            spec("type=registry,registry.insecure=true", &["r/a:1"]).unwrap(),
            ExporterSpec::Image {
                image: default_image(&["r/a:1"]),
                push: true,
                insecure: true,
            }
        );
        assert!(spec("type=image,push=true", &[]).is_err(), "no name");

        let mut outs = vec![];
        assert!(apply_push(&mut outs, &[]).is_err());
        apply_push(&mut outs, &["r/a:1".into()]).unwrap();
        assert_eq!(outs.len(), 1);
        assert_eq!(
            outs[0].spec(&["r/a:1".into()]).unwrap(),
            ExporterSpec::Image {
                image: default_image(&["r/a:1"]),
                push: true,
                insecure: false,
            }
        );
        let mut outs = vec![
            parse("type=image,name=r/x:1,oci-mediatypes=false").unwrap(),
            parse("type=local,dest=d").unwrap(),
        ];
        apply_push(&mut outs, &["ignored:1".into()]).unwrap();
        assert_eq!(outs.len(), 2);
        assert!(matches!(
            outs[0].spec(&[]).unwrap(),
            ExporterSpec::Image { push: true, .. }
        ));
    }

    #[test]
    fn containerd_output() {
        assert_eq!(
            spec("type=containerd", &["a:1"]).unwrap(),
            ExporterSpec::Containerd {
                image: default_image(&["a:1"]),
                unpack: false
            }
        );
        assert!(matches!(
            spec("type=containerd,name=x,unpack=true", &[]).unwrap(),
            ExporterSpec::Containerd { unpack: true, .. }
        ));
        assert!(
            spec("type=containerd", &[])
                .unwrap_err()
                .to_string()
                .contains("name=NAME")
        );
    }

    #[test]
    fn compression_options_on_every_image_output() {
        let zstd = Compression::new(Algorithm::Zstd, Some(19), true).unwrap();
        let opts = "compression=zstd,compression-level=19,force-compression=true";
        for s in [
            format!("type=oci,dest=o.tar,{opts}"),
            format!("type=docker,dest=d.tar,{opts}"),
            format!("type=image,name=r/a:1,push=true,{opts}"),
            format!("type=registry,name=r/a:1,{opts}"),
            format!("type=containerd,name=a:1,{opts}"),
        ] {
            let c = spec(&s, &[]).unwrap().image_options().unwrap().compression;
            assert_eq!(c, zstd, "{s}");
        }
        let c = spec(
            "type=oci,dest=o,compression-level=9,force-compression=",
            &[],
        )
        .unwrap()
        .image_options()
        .unwrap()
        .compression;
        assert_eq!(c, Compression::new(Algorithm::Gzip, Some(9), true).unwrap());

        let err = |s: &str| format!("{:#}", parse(s).unwrap_err());
        assert!(err("type=oci,dest=o,compression=lz4").contains("lz4"));
        assert!(
            err("type=oci,dest=o,compression-level=10").contains("out of range for gzip (0-9)")
        );
        assert!(err("type=oci,dest=o,compression-level=high").contains("not an integer"));
        assert!(err("type=oci,dest=o,force-compression=maybe").contains("boolean"));
        // type=local writes files, not layers.
        assert!(err("type=local,dest=d,compression=zstd").contains("unknown key `compression`"));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |s: &str| format!("{:#}", parse(s).unwrap_err());
        assert!(err("type=oci").contains("dest"));
        assert!(err("type=weird,dest=x").contains("weird"));
        assert!(err("type=oci,dest=x,tar=maybe").contains("boolean"));
        assert!(err("type=oci,dest=x,bogus=1").contains("bogus"));
        assert!(parse(r#"type=image,"name=a"#).is_err());
    }
}
