//! The Dockerfile lines a daemon's error points at, shown above the error as buildctl shows
//! them (`solver/errdefs/source.go` `Print`).
//!
//! BuildKit attaches typed details to its gRPC errors (`util/grpcerrors`): each is an `Any`
//! whose type URL names a Go type registered with `typeurl` and whose value is that type's
//! *JSON* encoding, e.g. `github.com/moby/buildkit/errdefs.Source+json` with
//! `{"info":{"filename":…,"data":<base64>},"ranges":[{"start":{"line":3},"end":{"line":3}}]}`.
//! Only the source locations are read here; stacks and the rest are for debugging daemons.

use base64::Engine as _;
use memobuild_proto::rpc;
use prost::Message;
use serde::Deserialize;

use crate::client::RemoteError;

/// The type URL suffix of a source location detail.
const SOURCE_DETAIL: &str = "errdefs.Source+json";

/// A source file and the line ranges an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file's name (`Dockerfile`).
    pub filename: String,
    /// Its text.
    pub text: String,
    /// 1-based inclusive line ranges.
    pub ranges: Vec<(i64, i64)>,
}

#[derive(Deserialize)]
struct SourceJson {
    info: Option<InfoJson>,
    #[serde(default)]
    ranges: Vec<RangeJson>,
}

#[derive(Deserialize)]
struct InfoJson {
    #[serde(default)]
    filename: String,
    /// Go's `[]byte` in JSON: base64.
    #[serde(default)]
    data: String,
}

#[derive(Deserialize)]
struct RangeJson {
    start: Option<PositionJson>,
    end: Option<PositionJson>,
}

#[derive(Deserialize)]
struct PositionJson {
    #[serde(default)]
    line: i64,
}

/// The source locations attached to the daemon errors in `e`'s chain.
pub fn sources(e: &anyhow::Error) -> Vec<Source> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<RemoteError>())
        .filter_map(|r| rpc::Status::decode(r.0.details()).ok())
        .flat_map(|s| s.details)
        .filter(|d| d.type_url.ends_with(SOURCE_DETAIL))
        .filter_map(|d| parse(&d.value))
        .collect()
}

/// One `errdefs.Source+json` value.
pub fn parse(json: &[u8]) -> Option<Source> {
    let s: SourceJson = serde_json::from_slice(json).ok()?;
    let info = s.info?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(info.data.as_bytes())
        .ok()?;
    let line = |p: &Option<PositionJson>| p.as_ref().map_or(0, |p| p.line);
    Some(Source {
        filename: info.filename,
        text: String::from_utf8_lossy(&data).into_owned(),
        ranges: s
            .ranges
            .iter()
            .map(|r| (line(&r.start), line(&r.end)))
            .collect(),
    })
}

impl Source {
    /// The lines of the ranges with some context, marked with `>>>`, in BuildKit's layout;
    /// empty when the ranges name no line of the text.
    pub fn render(&self) -> String {
        memobuild_frontend::subrequests::render_source(&self.filename, &self.text, &self.ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str =
        "ARG REGISTRY\nFROM ${REGISTRY}/library/busybox:latest\nRUN echo oops >&2; exit 3\n";

    fn detail(line: i64) -> String {
        let data = base64::engine::general_purpose::STANDARD.encode(DOCKERFILE);
        format!(
            r#"{{"info":{{"filename":"Dockerfile","data":"{data}","definition":{{"def":[]}}}},"ranges":[{{"start":{{"line":{line}}},"end":{{"line":{line}}}}}]}}"#
        )
    }

    #[test]
    fn renders_as_buildctl() {
        let source = parse(detail(3).as_bytes()).unwrap();
        assert_eq!(source.ranges, vec![(3, 3)]);
        assert_eq!(
            source.render(),
            "Dockerfile:3\n--------------------\n   1 |     ARG REGISTRY\n   2 |     FROM ${REGISTRY}/library/busybox:latest\n   3 | >>> RUN echo oops >&2; exit 3\n   4 |     \n--------------------\n"
        );
        let outside = parse(detail(9).as_bytes()).unwrap();
        assert_eq!(outside.render(), "");
    }

    #[test]
    fn details_are_found_in_the_error_chain() {
        let status = rpc::Status {
            code: 2,
            message: "exit code: 3".into(),
            details: vec![
                prost_types::Any {
                    type_url: "github.com/moby/buildkit/stack.Stack+json".into(),
                    value: b"{}".to_vec(),
                },
                prost_types::Any {
                    type_url: "github.com/moby/buildkit/errdefs.Source+json".into(),
                    value: detail(3).into_bytes(),
                },
            ],
        };
        let e = crate::client::remote(tonic::Status::with_details(
            tonic::Code::Unknown,
            "exit code: 3",
            status.encode_to_vec().into(),
        ))
        .context("failed to solve");
        let found = sources(&e);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].filename, "Dockerfile");
        assert!(sources(&anyhow::anyhow!("plain")).is_empty());
    }
}
