//! `frontend.lint`: the lint findings of a Dockerfile, as BuildKit's `DockerfileLint` and
//! `lint.LintResults`: every stage is checked (the target's, when one is named), the
//! `# check=` directive (or `BUILDKIT_DOCKERFILE_CHECK`) filters the findings, and the error
//! the build would stop at (a syntax error, a bad stage, `error=true` with findings) is the
//! result's `buildError`. `result.statuscode` is 1 when anything was found.

use crate::error::Warning;
use crate::lower::CachedResolver;
use crate::subrequests::json::{self, PbLocation};
use crate::subrequests::{Metadata, text};
use crate::{BuildOptions, FrontendError, ImageResolver};

pub(crate) fn lint(
    dockerfile: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Metadata {
    let name = opts.dockerfile_name.as_str();
    let check_arg = opts
        .build_args
        .get("BUILDKIT_DOCKERFILE_CHECK")
        .map(String::as_str);
    let (warnings, error) = match crate::parse_unfiltered(dockerfile, name, check_arg) {
        Err(e) => (Vec::new(), Some(e)),
        Ok((df, mut found, check)) => {
            // No target: every stage (a stage without a name only as the last one).
            let targets: Vec<Option<String>> = match &opts.target {
                Some(t) => vec![Some(t.clone())],
                None => df
                    .stages
                    .iter()
                    .filter_map(|s| s.from.name.clone().map(Some))
                    .chain([None])
                    .collect(),
            };
            let resolver = CachedResolver::new(resolver);
            let mut error = None;
            for target in targets {
                let o = BuildOptions {
                    target,
                    ..opts.clone()
                };
                if let Err(e) = crate::lower_parsed(df.clone(), &o, &resolver, &mut found) {
                    error = Some(e);
                    break;
                }
            }
            let found = check.filter(found);
            let error = error.or_else(|| {
                check
                    .violation(&found)
                    .map(|k| FrontendError::global(name, k))
            });
            (found, error)
        }
    };
    result(dockerfile, name, &warnings, error.as_ref())
}

fn result(
    dockerfile: &str,
    name: &str,
    warnings: &[Warning],
    error: Option<&FrontendError>,
) -> Metadata {
    let list: Vec<json::Warning> = warnings
        .iter()
        .map(|w| json::Warning {
            rule_name: w.rule.clone(),
            description: w.description().to_owned(),
            url: w.url(),
            detail: w.message.clone(),
            location: PbLocation::of(w.location.as_ref()),
        })
        .collect();
    let json = json::LintResults {
        warnings: (!list.is_empty()).then_some(list),
        sources: vec![json::SourceInfo {
            filename: name.to_owned(),
            data: json::bytes(dockerfile),
            language: "Dockerfile".to_owned(),
        }],
        build_error: error.map(|e| json::BuildError {
            message: e.kind.to_string(),
            location: PbLocation::of(e.location.as_ref()),
        }),
    };
    // BuildKit's `PrintLintViolations`: by line, each with its rule's page and the lines.
    let mut sorted: Vec<&Warning> = warnings.iter().collect();
    sorted.sort_by_key(|w| w.location.map_or(0, |l| l.line));
    let mut out = String::new();
    for w in sorted {
        out.push_str(&format!(
            "\nWARNING: {} - {}\n{}\n",
            w.rule,
            w.url(),
            w.message
        ));
        if let Some(l) = w.location {
            let range = (line(l.line), line(l.end_line.max(l.line)));
            out.push_str(&text::render_source(name, dockerfile, &[range]));
        }
    }
    let status = u8::from(!warnings.is_empty() || error.is_some());
    let mut md = crate::subrequests::metadata(&json, out, "1.0.0");
    md.insert("result.statuscode".into(), status.to_string().into_bytes());
    md
}

fn line(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Platform, ResolvedImage};

    struct Fixed;
    impl ImageResolver for Fixed {
        fn resolve_image_config(&self, _r: &str, _p: &Platform) -> Result<ResolvedImage, String> {
            Ok(ResolvedImage {
                digest: format!("sha256:{}", "a".repeat(64)),
                config: br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec(),
            })
        }
    }

    fn run(df: &str) -> (serde_json::Value, String, String) {
        let opts = BuildOptions::new(Platform::new("linux", "amd64", None));
        let md = lint(df, &opts, &Fixed);
        (
            serde_json::from_slice(&md["result.json"]).expect("json"),
            String::from_utf8_lossy(&md["result.txt"]).into_owned(),
            String::from_utf8_lossy(&md["result.statuscode"]).into_owned(),
        )
    }

    #[test]
    fn findings_of_every_stage_with_their_rule() {
        let (json, text, status) = run(
            "FROM alpine AS Build\nMAINTAINER me\n\nFROM alpine AS other\nCMD echo hi\n\nFROM alpine\n",
        );
        let rules: Vec<&str> = json["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .map(|w| w["ruleName"].as_str().expect("rule"))
            .collect();
        assert_eq!(
            rules,
            [
                "StageNameCasing",
                "MaintainerDeprecated",
                "JSONArgsRecommended"
            ]
        );
        assert_eq!(
            json["warnings"][1]["url"],
            "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/"
        );
        assert_eq!(
            json["warnings"][1]["location"],
            serde_json::json!({"ranges": [{"start": {"line": 2}, "end": {"line": 2}}]})
        );
        assert_eq!(json["sources"][0]["filename"], "Dockerfile");
        assert!(json.get("buildError").is_none());
        assert!(
            text.starts_with("\nWARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\nStage name 'Build' should be lowercase\nDockerfile:1\n--------------------\n   1 | >>> FROM alpine AS Build\n"),
            "{text}"
        );
        assert_eq!(status, "1");
    }

    #[test]
    fn clean_files_and_build_errors() {
        let (json, text, status) = run("FROM alpine\nRUN true\n");
        assert_eq!(json["warnings"], serde_json::Value::Null);
        assert_eq!((text.as_str(), status.as_str()), ("", "0"));

        let (json, _, status) = run("# check=error=true\nFROM alpine\nMAINTAINER me\n");
        assert_eq!(json["warnings"][0]["ruleName"], "MaintainerDeprecated");
        assert_eq!(
            json["buildError"]["message"],
            "lint violation found for rules: MaintainerDeprecated"
        );
        assert_eq!(status, "1");

        let (json, _, _) = run("FROM alpine\nRUN true\nFORM x\n");
        assert!(
            json["buildError"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown instruction")),
            "{json}"
        );
        assert_eq!(
            json["buildError"]["location"]["ranges"][0]["start"]["line"],
            3
        );
    }
}
