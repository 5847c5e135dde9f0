//! BuildKit's frontend subrequests (`requestid=frontend.*` attributes, buildx's `--call` and
//! `--check`), answered from a Dockerfile as BuildKit's Dockerfile frontend answers them
//! (`frontend/dockerui/requests.go`, `frontend/subrequests/**`): a result without a
//! filesystem whose metadata holds `result.json` (the JSON shapes of `outline.Outline`,
//! `targets.List`, `lint.LintResults`), `result.txt` (how buildx prints it), `version`, and
//! for a lint `result.statuscode` (1 when something was found).
//!
//! - [`outline`]: the build arguments, secrets and ssh agents the target uses, with their
//!   defaults and descriptions (`# NAME description` comments), and the target's own name and
//!   description;
//! - [`targets`]: every stage, the last one the default;
//! - [`lint`]: the lint findings of every stage (of the target, when one is named), and the
//!   error the build would stop at, if any (a `# check=error=true` finding among them).

mod json;
mod lint;
mod outline;
mod targets;
mod text;

use std::collections::BTreeMap;

use crate::{BuildOptions, FrontendError, ImageResolver};

pub use text::render_source;

/// `requestid` of the outline subrequest.
pub const OUTLINE: &str = "frontend.outline";
/// `requestid` of the targets subrequest.
pub const TARGETS: &str = "frontend.targets";
/// `requestid` of the lint subrequest.
pub const LINT: &str = "frontend.lint";
/// `requestid` of the request listing the others.
pub const DESCRIBE: &str = "frontend.subrequests.describe";

/// A subrequest's answer: the result's metadata (`result.json`, `result.txt`, `version`, …).
pub type Metadata = BTreeMap<String, Vec<u8>>;

/// Answers subrequest `request_id` for `dockerfile`; `None` for an id this frontend does not
/// know (BuildKit answers "unsupported request").
pub fn handle(
    request_id: &str,
    dockerfile: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Option<Result<Metadata, FrontendError>> {
    Some(match request_id {
        OUTLINE => outline::outline(dockerfile, opts),
        TARGETS => targets::targets(dockerfile, &opts.dockerfile_name),
        LINT => Ok(lint::lint(dockerfile, opts, resolver)),
        DESCRIBE => Ok(describe()),
        _ => return None,
    })
}

/// The metadata of a subrequest's answer.
fn metadata(json: &impl serde::Serialize, text: String, version: &str) -> Metadata {
    // Go's `json.MarshalIndent(v, "", "  ")`.
    let json = serde_json::to_vec_pretty(json).unwrap_or_default();
    Metadata::from([
        ("result.json".to_owned(), json),
        ("result.txt".to_owned(), text.into_bytes()),
        ("version".to_owned(), version.as_bytes().to_vec()),
    ])
}

/// The description of `name` among `comments` (the comment lines right above an
/// instruction): a line `NAME description` (BuildKit's `getDocComment`).
fn doc_comment(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|c| c.strip_prefix(&prefix))
        .unwrap_or_default()
        .to_owned()
}

/// `frontend.subrequests.describe`: the subrequests answered here.
fn describe() -> Metadata {
    use json::{Named, Request};
    let named = |name| Named {
        name,
        description: "",
    };
    let results = || vec![named("result.json"), named("result.txt")];
    let request = |name, description, opts| Request {
        name,
        version: "1.0.0",
        kind: "rpc",
        description,
        opts,
        inputs: None,
        metadata: results(),
        refs: None,
    };
    let all = vec![
        request(
            OUTLINE,
            "List all parameters current build target supports",
            vec![Named {
                name: "target",
                description: "Target build stage",
            }],
        ),
        request(
            TARGETS,
            "List all targets current build supports",
            Vec::new(),
        ),
        request(LINT, "Lint a Dockerfile", Vec::new()),
        request(DESCRIBE, "List available subrequest types", Vec::new()),
    ];
    let mut rows = vec![vec![
        "NAME".to_owned(),
        "VERSION".to_owned(),
        "DESCRIPTION".to_owned(),
    ]];
    for r in &all {
        rows.push(vec![
            r.name
                .strip_prefix("frontend.")
                .unwrap_or(r.name)
                .to_owned(),
            r.version.to_owned(),
            r.description.to_owned(),
        ]);
    }
    metadata(&all, text::table(&rows, 1), "1.0.0")
}
