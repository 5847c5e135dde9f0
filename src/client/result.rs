//! What `build --addr` does with the daemon's answer besides printing the digest, as buildx
//! does (`commands/build.go`): `--metadata-file` (the response, values that are base64 JSON
//! decoded), `--iidfile` (the config digest, else the manifest's), and the answer of a
//! `--call` subrequest (`result.txt`, or `result.json` with `format=json`; a lint's findings
//! counted; `result.statuscode` as the exit status).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use base64::Engine;

use crate::client::request::CallRequest;

/// The exporter response key of the image config's digest.
const CONFIG_DIGEST: &str = "containerimage.config.digest";
/// The exporter response key of the manifest's digest.
const IMAGE_DIGEST: &str = "containerimage.digest";

/// The process should exit with this status and print nothing more (a subrequest's
/// `result.statuscode`, as buildx's `ExitCodeError`).
#[derive(Debug)]
pub struct ExitStatus(pub u8);

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// The image ID buildx writes to `--iidfile`: the config digest when the exporter gave one.
pub fn image_id(response: &BTreeMap<String, String>) -> String {
    response
        .get(CONFIG_DIGEST)
        .or_else(|| response.get(IMAGE_DIGEST))
        .cloned()
        .unwrap_or_default()
}

/// The response as buildx writes it to `--metadata-file`: each value that is base64 of a
/// JSON object (or a non-empty array of objects) as that JSON, `result.json` as the JSON it
/// is, anything else as the string.
pub fn metadata_json(response: &BTreeMap<String, String>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (k, v) in response {
        let bytes = if k == "result.json" {
            Some(v.as_bytes().to_vec())
        } else {
            base64::engine::general_purpose::STANDARD.decode(v).ok()
        };
        let json = bytes
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|j| match j {
                serde_json::Value::Object(m) => !m.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty() && a.iter().all(|e| e.is_object()),
                _ => false,
            });
        out.insert(
            k.clone(),
            json.unwrap_or_else(|| serde_json::Value::String(v.clone())),
        );
    }
    serde_json::Value::Object(out)
}

/// Writes `--metadata-file` and `--iidfile`.
pub fn write_files(
    response: &BTreeMap<String, String>,
    metadata_file: Option<&Path>,
    iidfile: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(path) = iidfile {
        std::fs::write(path, image_id(response))
            .with_context(|| format!("writing image ID file `{}`", path.display()))?;
    }
    if let Some(path) = metadata_file {
        let mut text = serde_json::to_string_pretty(&metadata_json(response))?;
        text.push('\n');
        std::fs::write(path, text)
            .with_context(|| format!("writing metadata file `{}`", path.display()))?;
    }
    Ok(())
}

/// Prints the answer of a subrequest to stdout; an error (an [`ExitStatus`] or the lint's
/// build error) when the call failed.
pub fn print_call(call: &CallRequest, response: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let json = response.get("result.json").map(String::as_str);
    let text = response.get("result.txt").map(String::as_str);
    if call.json {
        println!("{}", json.unwrap_or_default());
    } else if call.name == "lint" {
        let parsed: serde_json::Value = json
            .map(serde_json::from_str)
            .transpose()
            .context("reading the lint result")?
            .unwrap_or_default();
        let warnings = parsed["warnings"].as_array().map_or(0, Vec::len);
        match warnings {
            0 => {}
            1 => println!("Check complete, 1 warning has been found!"),
            n => println!("Check complete, {n} warnings have been found!"),
        }
        print!("{}", text.unwrap_or_default());
        if let Some(message) = parsed["buildError"]["message"].as_str() {
            anyhow::bail!("{message}");
        }
        if warnings == 0 {
            println!("Check complete, no warnings found.");
        }
    } else {
        match text {
            Some(t) => print!("{t}"),
            None => println!("{}", json.unwrap_or_default()),
        }
    }
    if !call.ignore_status
        && let Some(code) = response
            .get("result.statuscode")
            .and_then(|c| c.trim().parse::<u8>().ok())
            .filter(|c| *c != 0)
    {
        return Err(ExitStatus(code).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn image_id_prefers_the_config_digest() {
        assert_eq!(
            image_id(&map(&[
                (IMAGE_DIGEST, "sha256:m"),
                (CONFIG_DIGEST, "sha256:c")
            ])),
            "sha256:c"
        );
        assert_eq!(image_id(&map(&[(IMAGE_DIGEST, "sha256:m")])), "sha256:m");
        assert_eq!(image_id(&map(&[])), "");
    }

    #[test]
    fn metadata_decodes_base64_json_as_buildx() {
        let descriptor = base64::engine::general_purpose::STANDARD
            .encode(br#"{"mediaType":"m","digest":"sha256:d","size":1}"#);
        let m = metadata_json(&map(&[
            ("containerimage.descriptor", &descriptor),
            ("containerimage.digest", "sha256:d"),
            ("image.name", "r/x:1,r/x:2"),
            // Valid base64 of something that is no JSON object stays a string.
            ("memobuild.steps.executed", "1234"),
            ("result.json", r#"{"targets":[]}"#),
        ]));
        assert_eq!(m["containerimage.descriptor"]["digest"], "sha256:d");
        assert_eq!(m["containerimage.digest"], "sha256:d");
        assert_eq!(m["image.name"], "r/x:1,r/x:2");
        assert_eq!(m["memobuild.steps.executed"], "1234");
        assert_eq!(m["result.json"]["targets"], serde_json::json!([]));
    }

    #[test]
    fn a_status_code_is_the_exit_status_unless_ignored() {
        let call = CallRequest {
            name: "lint".into(),
            json: true,
            ignore_status: false,
        };
        let r = map(&[("result.json", "{}"), ("result.statuscode", "1")]);
        let e = print_call(&call, &r).unwrap_err();
        assert_eq!(e.downcast_ref::<ExitStatus>().map(|s| s.0), Some(1));
        let ignore = CallRequest {
            ignore_status: true,
            ..call
        };
        print_call(&ignore, &r).unwrap();
    }
}
