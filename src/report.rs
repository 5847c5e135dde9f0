//! The build report `memobuild build` sends to its `--remote-cache` server when it is done:
//! how long it took, how it ended, and every cacheable step with its time and whether it came
//! from the cache (`POST /api/builds`, see `server::api`). A server that cannot take it is a
//! warning, never a failed build, and costs at most a few seconds.
//!
//! Step names are what progress shows, with build args expanded (as BuildKit names them), so
//! every `--build-arg` value of three characters or more is replaced by `***` in the names and
//! the error text before they leave the machine: the server's readers and webhook receivers
//! are not the build's.

use std::path::Path;
use std::time::{Duration, SystemTime};

use memobuild_worker::cache::history::VertexReport;

use crate::server::builds::{BuildRecord, BuildStatus, VertexTiming};

/// The longest error text sent.
const MAX_ERROR: usize = 2000;

/// What the build was, before it ran.
pub struct Subject<'a> {
    /// `--project`, else the context directory's name.
    pub project: Option<&'a str>,
    /// The context directory.
    pub context: &'a Path,
    /// `-f`, if given.
    pub dockerfile: Option<&'a Path>,
    /// `--target`.
    pub target: Option<&'a str>,
    /// `-t` names.
    pub tags: &'a [String],
    /// `--build-arg` values, masked wherever they appear.
    pub masked: Vec<&'a str>,
    /// Why each step that ran did (MemoBuild's explain), by progress name.
    pub reasons: &'a std::collections::BTreeMap<String, String>,
}

/// Shortest value masked: shorter ones are no secret, and masking `1` would garble numbers.
const MIN_MASKED: usize = 3;

/// `text` with every value of `masked` replaced by `***`, the longest first (so a value that
/// contains another is masked whole).
fn mask(text: &str, masked: &[&str]) -> String {
    let mut values: Vec<&str> = masked
        .iter()
        .copied()
        .filter(|v| v.len() >= MIN_MASKED)
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_owned();
    for v in values {
        if out.contains(v) {
            out = out.replace(v, "***");
        }
    }
    out
}

/// Makes the record of a finished build.
pub fn record(
    subject: &Subject<'_>,
    started: SystemTime,
    took: Duration,
    vertices: &[VertexReport],
    outcome: Result<&str, String>,
) -> BuildRecord {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let context = abs(subject.context);
    let project = subject.project.map(str::to_owned).unwrap_or_else(|| {
        context
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let dockerfile = match subject.dockerfile {
        None => "Dockerfile".to_owned(),
        Some(f) => {
            let f = abs(f);
            f.strip_prefix(&context)
                .map(Path::to_path_buf)
                .unwrap_or(f)
                .to_string_lossy()
                .into_owned()
        }
    };
    let (status, image, error) = match outcome {
        Ok(digest) => (BuildStatus::Succeeded, Some(digest.to_owned()), None),
        Err(e) => {
            let mut e = mask(&e, &subject.masked);
            if e.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push('…');
            }
            (BuildStatus::Failed, None, Some(e))
        }
    };
    BuildRecord {
        id: uuid::Uuid::new_v4().to_string(),
        project,
        target: subject.target.map(str::to_owned),
        dockerfile,
        host: hostname(),
        started_at: humantime::format_rfc3339_millis(started).to_string(),
        duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        status,
        error,
        image,
        tags: subject.tags.to_vec(),
        vertices: vertices
            .iter()
            .map(|v| VertexTiming {
                name: mask(&v.name, &subject.masked),
                digest: v.digest.clone(),
                cached: v.cached,
                duration_ms: v.duration_ms,
                reason: (!v.cached)
                    .then(|| subject.reasons.get(&v.name))
                    .flatten()
                    .map(|r| mask(r, &subject.masked)),
            })
            .collect(),
        received_at: None,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// Sends `record` to the server at `base`; the error says what went wrong. A remote cache that
/// is not `memobuild server` (bazel-remote, a WebDAV store) has no `/api/builds`: its 404, 405
/// or 501 means "keeps no build reports", which is no reason for a warning on every build.
pub async fn send(base: &str, token: Option<&str>, record: &BuildRecord) -> Result<(), String> {
    let url = format!("{}/api/builds", base.trim_end_matches('/'));
    // A small JSON body after the build: a total limit is the right one (it bounds the first
    // byte and any stall too), and a server that does not answer costs 5 s and a warning.
    let client = memobuild_worker::tls::client_builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("{url}: {e}"))?;
    let mut req = client.post(&url).json(record);
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    if matches!(status.as_u16(), 404 | 405 | 501) {
        tracing::debug!(%url, %status, "the remote cache keeps no build reports");
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(format!("{url}: HTTP {status}: {}", body.trim()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn masking_takes_longest_values_first_and_skips_short_ones() {
        assert_eq!(
            mask("a=abcdef b=abc c=1", &["abc", "abcdef", "1"]),
            "a=*** b=*** c=1"
        );
        assert_eq!(mask("nothing here", &[]), "nothing here");
    }

    #[test]
    fn record_of_a_build() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("shop");
        std::fs::create_dir_all(ctx.join("docker")).unwrap();
        let df = ctx.join("docker/Dockerfile.prod");
        std::fs::write(&df, "FROM x\n").unwrap();
        let tags = vec!["shop:1".to_owned()];
        let reasons = std::collections::BTreeMap::from([(
            "[2/2] COPY . /src".to_owned(),
            "file `app.conf` changed; build arg `TOKEN` is now `s3cr3t-token`".to_owned(),
        )]);
        let subject = Subject {
            project: None,
            context: &ctx,
            dockerfile: Some(&df),
            target: Some("prod"),
            tags: &tags,
            masked: vec!["s3cr3t-token", "1"],
            reasons: &reasons,
        };
        let v = [
            VertexReport {
                digest: "sha256:d".into(),
                name: "[1/2] RUN make TOKEN=s3cr3t-token JOBS=1".into(),
                key: "k".into(),
                cached: true,
                duration_ms: 3,
            },
            VertexReport {
                digest: "sha256:e".into(),
                name: "[2/2] COPY . /src".into(),
                key: "k2".into(),
                cached: false,
                duration_ms: 5,
            },
        ];
        let r = record(
            &subject,
            SystemTime::UNIX_EPOCH,
            Duration::from_millis(1500),
            &v,
            Ok("sha256:img"),
        );
        assert_eq!(r.project, "shop");
        assert_eq!(r.dockerfile, "docker/Dockerfile.prod");
        assert_eq!(r.target.as_deref(), Some("prod"));
        assert_eq!(r.started_at, "1970-01-01T00:00:00.000Z");
        assert_eq!(r.duration_ms, 1500);
        assert_eq!(r.status, BuildStatus::Succeeded);
        assert_eq!(r.image.as_deref(), Some("sha256:img"));
        assert_eq!(r.vertices[0].name, "[1/2] RUN make TOKEN=*** JOBS=1");
        assert_eq!(r.vertices[0].reason, None, "a cached step did not run");
        // Why a step ran is reported, with build-arg values masked.
        assert_eq!(
            r.vertices[1].reason.as_deref(),
            Some("file `app.conf` changed; build arg `TOKEN` is now `***`")
        );
        assert!(r.validate().is_ok(), "{:?}", r.validate());

        let long = format!("s3cr3t-token {}", "é".repeat(3000));
        let failed = record(
            &Subject {
                project: Some("named"),
                ..subject
            },
            SystemTime::now(),
            Duration::ZERO,
            &[],
            Err(long),
        );
        assert_eq!(failed.project, "named");
        assert_eq!(failed.status, BuildStatus::Failed);
        let error = failed.error.as_ref().unwrap();
        assert!(error.starts_with("*** é"), "{error}");
        assert!(error.len() <= MAX_ERROR + 3);
        assert!(failed.validate().is_ok());
    }
}
