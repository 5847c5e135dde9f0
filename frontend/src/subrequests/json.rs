//! The JSON shapes of BuildKit's subrequest results, fields in Go's order and left out where
//! Go's `omitempty` leaves them out (`frontend/subrequests/{outline,targets,lint}`,
//! `solver/pb` `Location`, `SourceInfo`).

use base64::Engine as _;
use serde::Serialize;

use crate::error::Location;

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn no(b: &bool) -> bool {
    !*b
}

/// Go's `[]byte`: base64.
pub(crate) fn bytes(data: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `pb.Position`.
#[derive(Serialize)]
pub(crate) struct Position {
    #[serde(skip_serializing_if = "is_zero")]
    pub line: i32,
}

/// `pb.Range`.
#[derive(Serialize)]
pub(crate) struct Range {
    pub start: Position,
    pub end: Position,
}

/// `pb.Location`: one range from the first to the last line of an instruction.
#[derive(Serialize)]
pub(crate) struct PbLocation {
    #[serde(rename = "sourceIndex", skip_serializing_if = "is_zero")]
    pub source_index: i32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
}

impl PbLocation {
    pub(crate) fn of(loc: Option<&Location>) -> Self {
        let line = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        PbLocation {
            source_index: 0,
            ranges: loc
                .map(|l| {
                    vec![Range {
                        start: Position { line: line(l.line) },
                        end: Position {
                            line: line(l.end_line.max(l.line)),
                        },
                    }]
                })
                .unwrap_or_default(),
        }
    }
}

/// `outline.Arg`.
#[derive(Serialize)]
pub(crate) struct Arg {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    pub location: PbLocation,
}

/// `outline.Secret` and `outline.SSH`.
#[derive(Serialize)]
pub(crate) struct Need {
    pub name: String,
    #[serde(skip_serializing_if = "no")]
    pub required: bool,
    pub location: PbLocation,
}

/// `outline.Outline`.
#[derive(Serialize)]
pub(crate) struct Outline {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Arg>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Need>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<Need>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

/// `targets.Target`.
#[derive(Serialize)]
pub(crate) struct Target {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "no")]
    pub default: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub base: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    pub location: PbLocation,
}

/// `targets.List`.
#[derive(Serialize)]
pub(crate) struct TargetList {
    pub targets: Vec<Target>,
    pub sources: Vec<String>,
}

/// `lint.Warning`.
#[derive(Serialize)]
pub(crate) struct Warning {
    #[serde(rename = "ruleName")]
    pub rule_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub location: PbLocation,
}

/// `pb.SourceInfo` (without the Definition of the Dockerfile's source).
#[derive(Serialize)]
pub(crate) struct SourceInfo {
    pub filename: String,
    pub data: String,
    pub language: String,
}

/// `lint.BuildError`.
#[derive(Serialize)]
pub(crate) struct BuildError {
    pub message: String,
    pub location: PbLocation,
}

/// `lint.LintResults`; `warnings` is Go's nil slice (`null`) when there are none.
#[derive(Serialize)]
pub(crate) struct LintResults {
    pub warnings: Option<Vec<Warning>>,
    pub sources: Vec<SourceInfo>,
    #[serde(rename = "buildError", skip_serializing_if = "Option::is_none")]
    pub build_error: Option<BuildError>,
}

/// `subrequests.Named`.
#[derive(Serialize)]
pub(crate) struct Named {
    pub name: &'static str,
    pub description: &'static str,
}

/// `subrequests.Request`: a subrequest as `frontend.subrequests.describe` lists it.
#[derive(Serialize)]
pub(crate) struct Request {
    pub name: &'static str,
    pub version: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub description: &'static str,
    pub opts: Vec<Named>,
    pub inputs: Option<Vec<Named>>,
    pub metadata: Vec<Named>,
    pub refs: Option<Vec<Named>>,
}
