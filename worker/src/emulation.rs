//! Which platforms this machine can run steps for: its own architecture, the 32-bit one it
//! also executes (`386` on `amd64`, `arm` on `arm64`), and those an emulator is registered
//! for in `binfmt_misc` (qemu-user-static and friends). A step for any other platform fails
//! with the kernel's "exec format error"; [`exec_format_note`] says why in words.

use memobuild_proto::pb;

/// Go's name for this machine's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// The `binfmt_misc` entries that run binaries of a Go architecture.
fn emulators(arch: &str) -> &'static [&'static str] {
    match arch {
        "amd64" => &["qemu-x86_64"],
        "386" => &["qemu-i386"],
        "arm64" => &["qemu-aarch64"],
        "arm" => &["qemu-arm"],
        "ppc64le" => &["qemu-ppc64le"],
        "riscv64" => &["qemu-riscv64"],
        "s390x" => &["qemu-s390x"],
        "mips64le" => &["qemu-mips64el"],
        "loong64" => &["qemu-loongarch64"],
        _ => &[],
    }
}

/// Whether steps of `platform` run here (natively, or through a registered emulator).
pub fn runnable(platform: &pb::Platform) -> bool {
    if !platform.os.is_empty() && platform.os != "linux" {
        return false;
    }
    let arch = platform.architecture.as_str();
    let host = host_arch();
    if arch.is_empty()
        || arch == host
        || (host, arch) == ("amd64", "386")
        || (host, arch) == ("arm64", "arm")
    {
        return true;
    }
    emulators(arch).iter().any(|e| {
        std::path::Path::new("/proc/sys/fs/binfmt_misc")
            .join(e)
            .exists()
    })
}

/// For a step that failed with "exec format error": the platform it is for and why it cannot
/// run here, when that is the reason (`None` when the platform runs here).
pub fn exec_format_note(platform: &pb::Platform, output: &[String]) -> Option<String> {
    if runnable(platform) || !output.iter().any(|l| l.contains("exec format error")) {
        return None;
    }
    let name = if platform.variant.is_empty() {
        format!("{}/{}", platform.os, platform.architecture)
    } else {
        format!(
            "{}/{}/{}",
            platform.os, platform.architecture, platform.variant
        )
    };
    Some(format!(
        "the step is for platform {name}, which this machine cannot run (it runs linux/{} binaries and has no emulator for {} registered in binfmt_misc): build for linux/{} or install an emulator (qemu-user-static)",
        host_arch(),
        platform.architecture,
        host_arch()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str) -> pb::Platform {
        pb::Platform {
            os: os.into(),
            architecture: arch.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_host_runs_its_own_platform() {
        assert!(runnable(&p("linux", host_arch())));
        assert!(runnable(&p("", "")));
        assert!(!runnable(&p("windows", host_arch())));
    }

    #[test]
    fn an_exec_format_error_of_a_foreign_platform_is_explained() {
        let foreign = p("linux", "mips");
        let out = vec!["exec /bin/sh: exec format error".to_string()];
        let note = exec_format_note(&foreign, &out).expect("a note");
        assert!(
            note.starts_with("the step is for platform linux/mips"),
            "{note}"
        );
        assert_eq!(exec_format_note(&foreign, &["other".to_string()]), None);
        assert_eq!(exec_format_note(&p("linux", host_arch()), &out), None);
    }
}
