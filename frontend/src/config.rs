//! The OCI image config JSON (with Docker's extensions), serialized deterministically.
//!
//! Maps are `BTreeMap`s so that the same build always yields the same bytes. Top-level keys are
//! declared in alphabetical order, as BuildKit's exporter writes them after patching the config.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An empty JSON object (`{}`), the value type of `ExposedPorts` and `Volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The image config document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// `MAINTAINER`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// Runtime defaults.
    #[serde(default)]
    pub config: ContainerConfig,
    /// Creation time (RFC 3339), from `SOURCE_DATE_EPOCH` if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// One entry per instruction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// OS features.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// OS version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    /// Layer diff ids.
    #[serde(default)]
    pub rootfs: RootFs,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// `config` of the image config, in Go's field order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// `EXPOSE`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    /// `ENV`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub env: Vec<String>,
    /// `ENTRYPOINT`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub entrypoint: Vec<String>,
    /// `CMD`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub cmd: Vec<String>,
    /// `VOLUME`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_map"
    )]
    pub volumes: BTreeMap<String, Empty>,
    /// `WORKDIR`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    /// `LABEL`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_map"
    )]
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    /// Set by shell-form `CMD`/`ENTRYPOINT` (Windows compatibility).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    /// `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub on_build: Vec<String>,
    /// `SHELL`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub shell: Vec<String>,
}

/// `Healthcheck` (durations in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// The test.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_vec"
    )]
    pub test: Vec<String>,
    /// Interval.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    /// Timeout.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    /// Start period.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    /// Start interval.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    /// Retries.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    /// Author.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// `buildkit.dockerfile.v0` for entries we add.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// The instruction did not change the filesystem.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// `rootfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests.
    #[serde(default, deserialize_with = "null_vec")]
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn null_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn null_map<'de, D: serde::Deserializer<'de>, V: Deserialize<'de>>(
    d: D,
) -> Result<BTreeMap<String, V>, D::Error> {
    Ok(Option::<BTreeMap<String, V>>::deserialize(d)?.unwrap_or_default())
}

impl ImageConfig {
    /// Serializes to JSON bytes (deterministic).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain structs, strings and BTreeMaps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Formats Unix seconds as RFC 3339 UTC (`2023-01-02T03:04:05Z`).
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let mut y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    if m <= 2 {
        y += 1;
    }
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses a Go duration (`30s`, `1m30s`, `1.5h`, `100ms`) into nanoseconds.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * mult;
    }
    Some(total.round() as i64)
}

/// Formats nanoseconds as Go's `time.Duration.String()` does (`1m30s`, `500ms`, `0s`).
pub fn format_go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        let (unit, div) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        out.push_str(&frac(u, div));
        out.push_str(unit);
    } else {
        let h = u / 3_600_000_000_000;
        let m = u / 60_000_000_000 % 60;
        let s_ns = u % 60_000_000_000;
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&frac(s_ns, 1_000_000_000));
        out.push('s');
    }
    if neg {
        out.insert(0, '-');
    }
    out
}

fn frac(v: u64, div: u64) -> String {
    let whole = v / div;
    let f = v % div;
    if f == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{f:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(format_go_duration(90_000_000_000), "1m30s");
        assert_eq!(format_go_duration(1_500_000_000), "1.5s");
        assert_eq!(format_go_duration(500_000_000), "500ms");
        assert_eq!(format_go_duration(3_600_000_000_000), "1h0m0s");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn roundtrip_keeps_fields_and_drops_nulls() {
        let cfg: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"Volumes":null},"rootfs":{"type":"layers","diff_ids":["sha256:a"]}}"#,
        )
        .expect("parses");
        assert_eq!(cfg.config.cmd, vec!["sh"]);
        let out = String::from_utf8(cfg.to_json()).expect("utf8");
        assert_eq!(
            out,
            r#"{"architecture":"amd64","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:a"]}}"#
        );
    }
}
