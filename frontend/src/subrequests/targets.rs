//! `frontend.targets`: the stages of a Dockerfile (BuildKit's `dockerfile2llb.ListTargets`
//! and `targets.List`): name, description (`# NAME description` above its `FROM`), base and
//! `--platform` as written, location; the last stage is the default.

use crate::FrontendError;
use crate::subrequests::json::{self, PbLocation};
use crate::subrequests::{Metadata, doc_comment, metadata, text};

pub(crate) fn targets(dockerfile: &str, name: &str) -> Result<Metadata, FrontendError> {
    let (df, _, _) = crate::parse_unfiltered(dockerfile, name, None)?;
    let last = df.stages.len().saturating_sub(1);
    let mut list = Vec::new();
    let mut rows = vec![vec!["TARGET".to_owned(), "DESCRIPTION".to_owned()]];
    for (i, st) in df.stages.iter().enumerate() {
        let stage_name = st.from.name.clone().unwrap_or_default();
        let description = doc_comment(&st.comments, &stage_name);
        let default = i == last;
        list.push(json::Target {
            name: stage_name.clone(),
            default,
            description: description.clone(),
            base: st.from.base.clone(),
            platform: st.from.platform.clone().unwrap_or_default(),
            location: PbLocation::of(Some(&st.location)),
        });
        let shown = match (stage_name.is_empty(), default) {
            (true, true) => "(default)".to_owned(),
            (false, true) => format!("{stage_name} (default)"),
            _ => stage_name,
        };
        rows.push(vec![shown, description]);
    }
    let json = json::TargetList {
        targets: list,
        sources: vec![json::bytes(dockerfile)],
    };
    Ok(metadata(&json, text::table(&rows, 1), "1.0.0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_with_descriptions_and_the_default() {
        let df = "FROM alpine AS base\n\n# build compiles the app\nFROM --platform=$BUILDPLATFORM base AS build\nRUN make\n\nFROM scratch\nCOPY --from=build /app /\n";
        let md = targets(df, "Dockerfile").expect("targets");
        let json: serde_json::Value =
            serde_json::from_slice(&md["result.json"]).expect("result.json");
        assert_eq!(
            json["targets"],
            serde_json::json!([
                {"name": "base", "base": "alpine", "location": {"ranges": [{"start": {"line": 1}, "end": {"line": 1}}]}},
                {"name": "build", "description": "compiles the app", "base": "base", "platform": "$BUILDPLATFORM", "location": {"ranges": [{"start": {"line": 4}, "end": {"line": 4}}]}},
                {"default": true, "base": "scratch", "location": {"ranges": [{"start": {"line": 7}, "end": {"line": 7}}]}},
            ])
        );
        assert_eq!(
            String::from_utf8_lossy(&md["result.txt"]),
            "TARGET    DESCRIPTION\nbase      \nbuild     compiles the app\n(default) \n"
        );
        assert_eq!(md["version"], b"1.0.0");
    }
}
