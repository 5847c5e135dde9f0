//! `https://` and `http://` sources: one downloaded file, alone in a layer.
//!
//! As BuildKit's http source: the file is `/<name>`, where the name is `http.filename`, else the
//! `filename` of a `Content-Disposition` header, else the URL path's last segment, else `index`;
//! its mode is `http.perm` (0600 when absent), its owner `http.uid`:`http.gid` (0:0), its mtime
//! the response's `Last-Modified` (1970-01-01 without one; the layer writer clamps it like every
//! mtime). With `http.checksum` (`sha256:<hex>`) the bytes must have that digest. Attrs
//! `http.header.<Name>` are sent as request headers.
//!
//! Caching (`solver/cachekey.rs`): with a checksum the op pins the content, so the op is the key
//! and a hit skips the download. Without one the URL is fetched on every build, as BuildKit
//! does, and the source itself is not recorded: its layer is a function of the bytes, so an
//! unchanged file gives the same chain ID and the copy that reads it is a hit (early cutoff).

use std::path::Path;

use memobuild_proto::{attr, pb};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::layer::write_layer;
use crate::solver::{FsRef, Output, Solve, SolveError};

/// BuildKit's default mode of a downloaded file.
const DEFAULT_PERM: u32 = 0o600;

/// How long to wait for a connection, and for each read of the body: a server that stops
/// answering fails the build instead of hanging it.
/// TCP and TLS connect to the server of an `ADD https://…`.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// reqwest's read timeout: from the request to the response headers (first byte), then between
/// two reads of the body (idle). Download servers can be slow to start a big file (a redirect,
/// a CDN fetching it first), hence more than a registry's 30 s; silence only, never a total, so a
/// slow download that keeps moving is never cut off, and a server that says nothing fails the
/// step in two minutes with its URL.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What an http source op asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpSpec {
    /// The URL (the op's identifier).
    pub(crate) url: String,
    /// Expected sha256 of the body, lowercase hex.
    pub(crate) sha256: Option<String>,
    /// `http.filename`.
    pub(crate) filename: Option<String>,
    /// File mode bits.
    pub(crate) perm: u32,
    /// Owner.
    pub(crate) uid: u32,
    /// Group.
    pub(crate) gid: u32,
    /// Extra request headers (`http.header.<Name>`).
    pub(crate) headers: Vec<(String, String)>,
}

/// Whether a source identifier names an http(s) download.
pub(crate) fn is_http(identifier: &str) -> bool {
    identifier.starts_with(attr::SCHEME_HTTPS) || identifier.starts_with(attr::SCHEME_HTTP)
}

impl HttpSpec {
    /// Reads the identifier and `http.*` attrs of a source op.
    pub(crate) fn from_op(src: &pb::SourceOp) -> Result<Self, String> {
        let get = |k: &str| src.attrs.get(k).filter(|v| !v.is_empty());
        let sha256 = match get(attr::ATTR_HTTP_CHECKSUM) {
            None => None,
            Some(c) => Some(parse_checksum(c)?),
        };
        let int = |k: &str, default: u32| -> Result<u32, String> {
            match get(k) {
                None => Ok(default),
                Some(v) => parse_go_int(v)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| format!("attr `{k}` is not a number: `{v}`")),
            }
        };
        Ok(HttpSpec {
            url: src.identifier.clone(),
            sha256,
            filename: get(attr::ATTR_HTTP_FILENAME).cloned(),
            perm: int(attr::ATTR_HTTP_PERM, DEFAULT_PERM)? & 0o7777,
            uid: int(attr::ATTR_HTTP_UID, 0)?,
            gid: int(attr::ATTR_HTTP_GID, 0)?,
            headers: src
                .attrs
                .iter()
                .filter_map(|(k, v)| {
                    let name = k.strip_prefix(attr::ATTR_HTTP_HEADER_PREFIX)?;
                    Some((name.to_owned(), v.clone()))
                })
                .collect(),
        })
    }
}

/// `sha256:<64 hex>` → the hex, lowercase.
fn parse_checksum(c: &str) -> Result<String, String> {
    let Some((alg, hex)) = c.split_once(':') else {
        return Err(format!(
            "checksum `{c}` is not a digest (expected `sha256:<hex>`)"
        ));
    };
    if alg != "sha256" {
        return Err(format!(
            "checksum algorithm `{alg}` is not supported (use sha256)"
        ));
    }
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "checksum `{c}` is not a sha256 digest (64 hex digits)"
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

/// An integer as Go's `strconv.ParseInt(s, 0, 64)` reads it: `0x`, `0o`, `0b` prefixes, a
/// leading `0` for octal, decimal otherwise (BuildKit writes `http.perm` as `0644`).
fn parse_go_int(s: &str) -> Option<u64> {
    let s = s.replace('_', "");
    let lower = s.to_ascii_lowercase();
    if let Some(h) = lower.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else if let Some(o) = lower.strip_prefix("0o") {
        u64::from_str_radix(o, 8).ok()
    } else if let Some(b) = lower.strip_prefix("0b") {
        u64::from_str_radix(b, 2).ok()
    } else if lower.len() > 1 && lower.starts_with('0') {
        u64::from_str_radix(&lower[1..], 8).ok()
    } else {
        lower.parse().ok()
    }
}

/// The name the file gets (see the module docs). Never empty, never a path.
fn file_name(manual: Option<&str>, disposition: Option<&str>, url: &str) -> String {
    if let Some(n) = manual.and_then(base_name) {
        return n;
    }
    if let Some(n) = disposition
        .and_then(disposition_filename)
        .filter(|n| !n.ends_with('/'))
        .and_then(|n| base_name(&n))
    {
        return n;
    }
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()?
                .rev()
                .find(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .and_then(|s| base_name(&s))
        .unwrap_or_else(|| "index".to_owned())
}

/// The last component of a slash-separated name, unless it is empty, `.` or `..`.
fn base_name(name: &str) -> Option<String> {
    let b = name.trim_end_matches('/').rsplit('/').next()?;
    (!b.is_empty() && b != "." && b != "..").then(|| b.to_owned())
}

/// The `filename` parameter of a `Content-Disposition` value.
fn disposition_filename(v: &str) -> Option<String> {
    v.split(';').skip(1).find_map(|p| {
        let (k, val) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("filename")
            .then(|| val.trim().trim_matches('"').to_owned())
    })
}

/// Seconds since the epoch of an HTTP date in the IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37
/// GMT`), the only one servers may send (RFC 9110 §5.6.7).
pub(crate) fn parse_http_date(s: &str) -> Option<i64> {
    let (_, rest) = s.trim().split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Solve {
    /// Downloads an http(s) source into a one-file layer.
    pub(crate) async fn http_source(
        &self,
        digest: &str,
        src: &pb::SourceOp,
    ) -> Result<Vec<Output>, SolveError> {
        let spec = HttpSpec::from_op(src).map_err(|m| self.error(digest, m))?;
        let url = &spec.url;
        let fail = |m: String| self.error(digest, m);
        let client = crate::tls::client_builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| fail(format!("http client: {e}")))?;
        let mut req = client.get(url);
        for (k, v) in &spec.headers {
            req = req.header(k, v);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| fail(format!("downloading `{url}`: {e}")))?;
        if !resp.status().is_success() {
            return Err(fail(format!(
                "downloading `{url}`: the server answered {}",
                resp.status()
            )));
        }
        let header = |h: reqwest::header::HeaderName| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let name = file_name(
            spec.filename.as_deref(),
            header(reqwest::header::CONTENT_DISPOSITION).as_deref(),
            url,
        );
        let mtime = header(reqwest::header::LAST_MODIFIED)
            .and_then(|d| parse_http_date(&d))
            .unwrap_or(0);

        let dir = self.temp_dir().map_err(&fail)?;
        let path = dir.path().join(&name);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| fail(format!("creating `{}`: {e}", path.display())))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fail(format!("downloading `{url}`: {e}")))?
        {
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| fail(format!("writing `{}`: {e}", path.display())))?;
        }
        file.flush()
            .await
            .map_err(|e| fail(format!("writing `{}`: {e}", path.display())))?;
        drop(file);
        let actual = hex::encode(hasher.finalize());
        if let Some(expected) = &spec.sha256
            && *expected != actual
        {
            return Err(fail(format!(
                "checksum mismatch for `{url}`: expected sha256:{expected}, got sha256:{actual}"
            )));
        }

        let blobs = self.build.blobs().clone();
        let opts = self.opts.layer;
        let layer = tokio::task::spawn_blocking(move || {
            finish_file(&path, &spec, mtime)?;
            write_layer(dir.path(), &blobs, opts).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| fail(format!("layer task failed: {e}")))?
        .map_err(&fail)?;
        Ok(vec![Output::Fs(FsRef {
            layers: vec![layer],
        })])
    }
}

/// Owner, mode (after the owner: `chown` clears set-id bits) and mtime of the downloaded file.
fn finish_file(path: &Path, spec: &HttpSpec, mtime: i64) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let at = |e: std::io::Error| format!("`{}`: {e}", path.display());
    std::os::unix::fs::chown(path, Some(spec.uid), Some(spec.gid)).map_err(at)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(spec.perm)).map_err(at)?;
    filetime::set_file_mtime(path, filetime::FileTime::from_unix_time(mtime, 0)).map_err(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, attrs: &[(&str, &str)]) -> pb::SourceOp {
        pb::SourceOp {
            identifier: id.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn attrs_with_buildkit_defaults() {
        let s = HttpSpec::from_op(&op("https://example.com/a/tool.tgz", &[])).unwrap();
        assert_eq!((s.perm, s.uid, s.gid), (0o600, 0, 0));
        assert_eq!((s.sha256, s.filename), (None, None));
        let hex = "AB".repeat(32);
        let s = HttpSpec::from_op(&op(
            "http://h/x",
            &[
                (attr::ATTR_HTTP_CHECKSUM, &format!("sha256:{hex}")),
                (attr::ATTR_HTTP_FILENAME, "f"),
                (attr::ATTR_HTTP_PERM, "0644"),
                (attr::ATTR_HTTP_UID, "1000"),
                (attr::ATTR_HTTP_GID, "0x10"),
            ],
        ))
        .unwrap();
        assert_eq!(s.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!((s.perm, s.uid, s.gid), (0o644, 1000, 16));
        assert_eq!(s.filename.as_deref(), Some("f"));
        let s =
            HttpSpec::from_op(&op("https://h/x", &[("http.header.Accept", "text/plain")])).unwrap();
        assert_eq!(
            s.headers,
            vec![("Accept".to_owned(), "text/plain".to_owned())]
        );
    }

    #[test]
    fn bad_checksums_and_numbers_are_errors() {
        for c in ["sha256:abc", "md5:abc", "nocolon"] {
            let e = HttpSpec::from_op(&op("https://h/x", &[(attr::ATTR_HTTP_CHECKSUM, c)]));
            assert!(e.is_err(), "{c}");
        }
        assert!(HttpSpec::from_op(&op("https://h/x", &[(attr::ATTR_HTTP_PERM, "rw")])).is_err());
    }

    #[test]
    fn go_integers() {
        assert_eq!(parse_go_int("0644"), Some(0o644));
        assert_eq!(parse_go_int("420"), Some(420));
        assert_eq!(parse_go_int("0o755"), Some(0o755));
        assert_eq!(parse_go_int("0"), Some(0));
        assert_eq!(parse_go_int("09"), None);
    }

    #[test]
    fn file_names() {
        let u = "https://example.com/dl/tool.tar.gz?x=1#f";
        assert_eq!(file_name(None, None, u), "tool.tar.gz");
        assert_eq!(file_name(Some("given"), None, u), "given");
        assert_eq!(file_name(Some("../../etc/x"), None, u), "x");
        assert_eq!(
            file_name(None, Some("attachment; filename=\"real.bin\""), u),
            "real.bin"
        );
        assert_eq!(
            file_name(None, Some("attachment; filename=dir/"), u),
            "tool.tar.gz"
        );
        assert_eq!(file_name(None, None, "https://example.com/dir/"), "dir");
        assert_eq!(file_name(None, None, "https://example.com"), "index");
        assert_eq!(file_name(Some(".."), None, "http://h/"), "index");
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sat, 29 Feb 2020 12:00:00 GMT"),
            Some(1582977600)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("garbage"), None);
    }
}
