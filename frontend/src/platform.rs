//! Target/build platforms (`os/arch[/variant]`).

use std::fmt;

/// An OCI platform.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v7`, `v8`, … if any.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_owned),
        }
        .normalized()
    }

    /// The platform this process runs on, in OCI spelling (`x86_64` → `amd64`).
    pub fn host() -> Self {
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            o => o,
        };
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            a => (a, None),
        };
        Self::new(os, arch, variant)
    }

    /// Parses `os/arch[/variant]` (also `os` alone is not accepted: BuildKit needs both).
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Some(Self::new(
                &os.to_ascii_lowercase(),
                &arch.to_ascii_lowercase(),
                None,
            )),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Some(Self::new(
                &os.to_ascii_lowercase(),
                &arch.to_ascii_lowercase(),
                Some(&variant.to_ascii_lowercase()),
            )),
            _ => None,
        }
    }

    /// containerd's normalisation of common aliases.
    fn normalized(mut self) -> Self {
        let arch = match self.architecture.as_str() {
            "x86_64" | "x86-64" => "amd64",
            "i386" => "386",
            "aarch64" => "arm64",
            "armhf" => {
                self.variant = Some("v7".into());
                "arm"
            }
            "armel" => {
                self.variant = Some("v6".into());
                "arm"
            }
            a => a,
        }
        .to_owned();
        self.architecture = arch;
        if self.architecture == "arm64" && matches!(self.variant.as_deref(), Some("8" | "v8")) {
            self.variant = None;
        }
        if self.architecture == "arm" && self.variant.is_none() {
            self.variant = Some("v7".into());
        }
        if let Some(v) = &self.variant
            && self.architecture == "arm"
            && v.chars().all(|c| c.is_ascii_digit())
        {
            self.variant = Some(format!("v{v}"));
        }
        self
    }

    /// The `pb::Platform` of an op.
    pub(crate) fn to_pb(&self) -> memobuild_proto::pb::Platform {
        memobuild_proto::pb::Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let p = Platform::parse("linux/amd64").expect("parses");
        assert_eq!(p.to_string(), "linux/amd64");
        assert_eq!(
            Platform::parse("linux/arm/v7")
                .expect("parses")
                .variant
                .as_deref(),
            Some("v7")
        );
        assert_eq!(
            Platform::parse("linux/aarch64")
                .expect("parses")
                .architecture,
            "arm64"
        );
        assert!(Platform::parse("linux").is_none());
        assert!(!Platform::host().architecture.is_empty());
    }
}
