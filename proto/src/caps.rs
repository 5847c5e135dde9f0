//! LLB capability ids (BuildKit `solver/pb/caps.go`).
//!
//! The frontend lists the caps an op needs in `OpMetadata.caps`; the daemon advertises the ones it
//! supports in `Ping`, and clients reject definitions naming caps the daemon lacks. Constant names
//! are the cap id upper-cased with `.`/`-` turned into `_`.

// Sources.
/// Cap `source.image`.
pub const CAP_SOURCE_IMAGE: &str = "source.image";
/// Cap `source.image.resolvemode`.
pub const CAP_SOURCE_IMAGE_RESOLVEMODE: &str = "source.image.resolvemode";
/// Cap `source.image.layerlimit`.
pub const CAP_SOURCE_IMAGE_LAYERLIMIT: &str = "source.image.layerlimit";
/// Cap `source.image.checksum`.
pub const CAP_SOURCE_IMAGE_CHECKSUM: &str = "source.image.checksum";
/// Cap `source.local`.
pub const CAP_SOURCE_LOCAL: &str = "source.local";
/// Cap `source.local.unique`.
pub const CAP_SOURCE_LOCAL_UNIQUE: &str = "source.local.unique";
/// Cap `source.local.sessionid`.
pub const CAP_SOURCE_LOCAL_SESSIONID: &str = "source.local.sessionid";
/// Cap `source.local.includepatterns`.
pub const CAP_SOURCE_LOCAL_INCLUDEPATTERNS: &str = "source.local.includepatterns";
/// Cap `source.local.followpaths`.
pub const CAP_SOURCE_LOCAL_FOLLOWPATHS: &str = "source.local.followpaths";
/// Cap `source.local.excludepatterns`.
pub const CAP_SOURCE_LOCAL_EXCLUDEPATTERNS: &str = "source.local.excludepatterns";
/// Cap `source.local.sharedkeyhint`.
pub const CAP_SOURCE_LOCAL_SHAREDKEYHINT: &str = "source.local.sharedkeyhint";
/// Cap `source.local.differ`.
pub const CAP_SOURCE_LOCAL_DIFFER: &str = "source.local.differ";
/// Cap `source.local.metadatatransfer`.
pub const CAP_SOURCE_LOCAL_METADATATRANSFER: &str = "source.local.metadatatransfer";
/// Cap `source.git`.
pub const CAP_SOURCE_GIT: &str = "source.git";
/// Cap `source.git.keepgitdir`.
pub const CAP_SOURCE_GIT_KEEPGITDIR: &str = "source.git.keepgitdir";
/// Cap `source.git.fullurl`.
pub const CAP_SOURCE_GIT_FULLURL: &str = "source.git.fullurl";
/// Cap `source.git.httpauth`.
pub const CAP_SOURCE_GIT_HTTPAUTH: &str = "source.git.httpauth";
/// Cap `source.git.knownsshhosts`.
pub const CAP_SOURCE_GIT_KNOWNSSHHOSTS: &str = "source.git.knownsshhosts";
/// Cap `source.git.mountsshsock`.
pub const CAP_SOURCE_GIT_MOUNTSSHSOCK: &str = "source.git.mountsshsock";
/// Cap `source.git.subdir`.
pub const CAP_SOURCE_GIT_SUBDIR: &str = "source.git.subdir";
/// Cap `source.git.checksum`.
pub const CAP_SOURCE_GIT_CHECKSUM: &str = "source.git.checksum";
/// Cap `source.git.skipsubmodules`.
pub const CAP_SOURCE_GIT_SKIPSUBMODULES: &str = "source.git.skipsubmodules";
/// Cap `source.git.signatureverify`.
pub const CAP_SOURCE_GIT_SIGNATUREVERIFY: &str = "source.git.signatureverify";
/// Cap `source.git.mtime`.
pub const CAP_SOURCE_GIT_MTIME: &str = "source.git.mtime";
/// Cap `source.git.fetchbycommit`.
pub const CAP_SOURCE_GIT_FETCHBYCOMMIT: &str = "source.git.fetchbycommit";
/// Cap `source.git.bundle`.
pub const CAP_SOURCE_GIT_BUNDLE: &str = "source.git.bundle";
/// Cap `source.git.checkoutbundle`.
pub const CAP_SOURCE_GIT_CHECKOUTBUNDLE: &str = "source.git.checkoutbundle";
/// Cap `source.http`.
pub const CAP_SOURCE_HTTP: &str = "source.http";
/// Cap `source.http.auth`.
pub const CAP_SOURCE_HTTP_AUTH: &str = "source.http.auth";
/// Cap `source.http.checksum`.
pub const CAP_SOURCE_HTTP_CHECKSUM: &str = "source.http.checksum";
/// Cap `source.http.perm`.
pub const CAP_SOURCE_HTTP_PERM: &str = "source.http.perm";
/// `soruce.http.uidgid`: the misspelling is BuildKit's and is what goes on the wire.
pub const CAP_SOURCE_HTTP_UIDGID: &str = "soruce.http.uidgid";
/// Cap `source.http.header`.
pub const CAP_SOURCE_HTTP_HEADER: &str = "source.http.header";
/// Cap `source.http.signatureverify`.
pub const CAP_SOURCE_HTTP_SIGNATUREVERIFY: &str = "source.http.signatureverify";
/// Cap `source.imageblob`.
pub const CAP_SOURCE_IMAGEBLOB: &str = "source.imageblob";
/// Cap `source.ocilayout`.
pub const CAP_SOURCE_OCILAYOUT: &str = "source.ocilayout";
/// Cap `source.buildop.llbfilename`.
pub const CAP_SOURCE_BUILDOP_LLBFILENAME: &str = "source.buildop.llbfilename";
/// Cap `source.policy`.
pub const CAP_SOURCE_POLICY: &str = "source.policy";
/// Cap `source.policy.session`.
pub const CAP_SOURCE_POLICY_SESSION: &str = "source.policy.session";

// Exec.
/// Cap `exec.meta.base`.
pub const CAP_EXEC_META_BASE: &str = "exec.meta.base";
/// Cap `exec.meta.cgroup.parent`.
pub const CAP_EXEC_META_CGROUP_PARENT: &str = "exec.meta.cgroup.parent";
/// Cap `exec.meta.network`.
pub const CAP_EXEC_META_NETWORK: &str = "exec.meta.network";
/// Cap `exec.meta.network.proxy`.
pub const CAP_EXEC_META_NETWORK_PROXY: &str = "exec.meta.network.proxy";
/// Cap `exec.meta.proxyenv`.
pub const CAP_EXEC_META_PROXYENV: &str = "exec.meta.proxyenv";
/// Cap `exec.meta.security`.
pub const CAP_EXEC_META_SECURITY: &str = "exec.meta.security";
/// Cap `exec.meta.security.devices.v1`.
pub const CAP_EXEC_META_SECURITY_DEVICES_V1: &str = "exec.meta.security.devices.v1";
/// Advertising it obliges the daemon to add a default `PATH` when the env lacks one.
pub const CAP_EXEC_META_SETSDEFAULTPATH: &str = "exec.meta.setsdefaultpath";
/// Cap `exec.meta.ulimit`.
pub const CAP_EXEC_META_ULIMIT: &str = "exec.meta.ulimit";
/// Cap `exec.meta.cdi`.
pub const CAP_EXEC_META_CDI: &str = "exec.meta.cdi";
/// Cap `exec.meta.removemountstubs.recursive`.
pub const CAP_EXEC_META_REMOVEMOUNTSTUBS_RECURSIVE: &str = "exec.meta.removemountstubs.recursive";
/// Cap `exec.meta.linux.resources`.
pub const CAP_EXEC_META_LINUX_RESOURCES: &str = "exec.meta.linux.resources";
/// Cap `exec.mount.bind`.
pub const CAP_EXEC_MOUNT_BIND: &str = "exec.mount.bind";
/// Cap `exec.mount.bind.readwrite-nooutput`.
pub const CAP_EXEC_MOUNT_BIND_READWRITE_NOOUTPUT: &str = "exec.mount.bind.readwrite-nooutput";
/// Cap `exec.mount.cache`.
pub const CAP_EXEC_MOUNT_CACHE: &str = "exec.mount.cache";
/// Cap `exec.mount.cache.sharing`.
pub const CAP_EXEC_MOUNT_CACHE_SHARING: &str = "exec.mount.cache.sharing";
/// Cap `exec.mount.selector`.
pub const CAP_EXEC_MOUNT_SELECTOR: &str = "exec.mount.selector";
/// Cap `exec.mount.tmpfs`.
pub const CAP_EXEC_MOUNT_TMPFS: &str = "exec.mount.tmpfs";
/// Cap `exec.mount.tmpfs.size`.
pub const CAP_EXEC_MOUNT_TMPFS_SIZE: &str = "exec.mount.tmpfs.size";
/// Cap `exec.mount.secret`.
pub const CAP_EXEC_MOUNT_SECRET: &str = "exec.mount.secret";
/// Cap `exec.mount.ssh`.
pub const CAP_EXEC_MOUNT_SSH: &str = "exec.mount.ssh";
/// Cap `exec.mount.cache.content`.
pub const CAP_EXEC_MOUNT_CACHE_CONTENT: &str = "exec.mount.cache.content";
/// Cap `exec.cgroup`.
pub const CAP_EXEC_CGROUP: &str = "exec.cgroup";
/// Cap `exec.secretenv`.
pub const CAP_EXEC_SECRETENV: &str = "exec.secretenv";
/// Cap `exec.validexitcode`.
pub const CAP_EXEC_VALIDEXITCODE: &str = "exec.validexitcode";

// File.
/// Cap `file.base`.
pub const CAP_FILE_BASE: &str = "file.base";
/// Cap `file.rm.wildcard`.
pub const CAP_FILE_RM_WILDCARD: &str = "file.rm.wildcard";
/// Cap `file.copy.includeexcludepatterns`.
pub const CAP_FILE_COPY_INCLUDEEXCLUDEPATTERNS: &str = "file.copy.includeexcludepatterns";
/// Cap `file.copy.requiredpaths`.
pub const CAP_FILE_COPY_REQUIREDPATHS: &str = "file.copy.requiredpaths";
/// Cap `file.rm.nofollowsymlink`.
pub const CAP_FILE_RM_NOFOLLOWSYMLINK: &str = "file.rm.nofollowsymlink";
/// Cap `file.copy.alwaysreplaceexistingdestpaths`.
pub const CAP_FILE_COPY_ALWAYSREPLACEEXISTINGDESTPATHS: &str =
    "file.copy.alwaysreplaceexistingdestpaths";
/// Cap `file.copy.modestring`.
pub const CAP_FILE_COPY_MODESTRING: &str = "file.copy.modestring";
/// Cap `file.symlink.create`.
pub const CAP_FILE_SYMLINK_CREATE: &str = "file.symlink.create";

// Op-level and metadata.
/// Cap `constraints`.
pub const CAP_CONSTRAINTS: &str = "constraints";
/// Cap `platform`.
pub const CAP_PLATFORM: &str = "platform";
/// Cap `meta.ignorecache`.
pub const CAP_META_IGNORECACHE: &str = "meta.ignorecache";
/// Cap `meta.description`.
pub const CAP_META_DESCRIPTION: &str = "meta.description";
/// Cap `meta.exportcache`.
pub const CAP_META_EXPORTCACHE: &str = "meta.exportcache";
/// Cap `mergeop`.
pub const CAP_MERGEOP: &str = "mergeop";
/// Cap `diffop`.
pub const CAP_DIFFOP: &str = "diffop";
/// Cap `passthroughop`.
pub const CAP_PASSTHROUGHOP: &str = "passthroughop";

// Daemon features (cache backends, exporters, policies, GC, history).
/// Cap `cache.gha`.
pub const CAP_CACHE_GHA: &str = "cache.gha";
/// Cap `cache.s3`.
pub const CAP_CACHE_S3: &str = "cache.s3";
/// Cap `cache.azblob`.
pub const CAP_CACHE_AZBLOB: &str = "cache.azblob";
/// Cap `exporter.image.annotations`.
pub const CAP_EXPORTER_IMAGE_ANNOTATIONS: &str = "exporter.image.annotations";
/// buildx checks presence, not `enabled`: advertising it turns on provenance attestations.
pub const CAP_EXPORTER_IMAGE_ATTESTATIONS: &str = "exporter.image.attestations";
/// Cap `exporter.sourcedateepoch`.
pub const CAP_EXPORTER_SOURCEDATEEPOCH: &str = "exporter.sourcedateepoch";
/// Cap `exporter.multiple`.
pub const CAP_EXPORTER_MULTIPLE: &str = "exporter.multiple";
/// Cap `exporter.session`.
pub const CAP_EXPORTER_SESSION: &str = "exporter.session";
/// Cap `gc.freespacefilter`.
pub const CAP_GC_FREESPACEFILTER: &str = "gc.freespacefilter";
/// Cap `history.filter`.
pub const CAP_HISTORY_FILTER: &str = "history.filter";

/// Every cap id above, in BuildKit's order. A daemon should advertise the caps whose syntax it
/// accepts; see `buildkit-wire.md` §6.7 for the ones to hold back (attestations, GHA/S3 cache).
pub const ALL: &[&str] = &[
    CAP_SOURCE_IMAGE,
    CAP_SOURCE_IMAGE_RESOLVEMODE,
    CAP_SOURCE_IMAGE_LAYERLIMIT,
    CAP_SOURCE_IMAGE_CHECKSUM,
    CAP_SOURCE_LOCAL,
    CAP_SOURCE_LOCAL_UNIQUE,
    CAP_SOURCE_LOCAL_SESSIONID,
    CAP_SOURCE_LOCAL_INCLUDEPATTERNS,
    CAP_SOURCE_LOCAL_FOLLOWPATHS,
    CAP_SOURCE_LOCAL_EXCLUDEPATTERNS,
    CAP_SOURCE_LOCAL_SHAREDKEYHINT,
    CAP_SOURCE_LOCAL_DIFFER,
    CAP_SOURCE_LOCAL_METADATATRANSFER,
    CAP_SOURCE_GIT,
    CAP_SOURCE_GIT_KEEPGITDIR,
    CAP_SOURCE_GIT_FULLURL,
    CAP_SOURCE_GIT_HTTPAUTH,
    CAP_SOURCE_GIT_KNOWNSSHHOSTS,
    CAP_SOURCE_GIT_MOUNTSSHSOCK,
    CAP_SOURCE_GIT_SUBDIR,
    CAP_SOURCE_GIT_CHECKSUM,
    CAP_SOURCE_GIT_SKIPSUBMODULES,
    CAP_SOURCE_GIT_SIGNATUREVERIFY,
    CAP_SOURCE_GIT_MTIME,
    CAP_SOURCE_GIT_FETCHBYCOMMIT,
    CAP_SOURCE_GIT_BUNDLE,
    CAP_SOURCE_GIT_CHECKOUTBUNDLE,
    CAP_SOURCE_HTTP,
    CAP_SOURCE_HTTP_AUTH,
    CAP_SOURCE_HTTP_CHECKSUM,
    CAP_SOURCE_HTTP_PERM,
    CAP_SOURCE_HTTP_UIDGID,
    CAP_SOURCE_HTTP_HEADER,
    CAP_SOURCE_HTTP_SIGNATUREVERIFY,
    CAP_SOURCE_IMAGEBLOB,
    CAP_SOURCE_OCILAYOUT,
    CAP_SOURCE_BUILDOP_LLBFILENAME,
    CAP_EXEC_META_BASE,
    CAP_EXEC_META_CGROUP_PARENT,
    CAP_EXEC_META_NETWORK,
    CAP_EXEC_META_NETWORK_PROXY,
    CAP_EXEC_META_PROXYENV,
    CAP_EXEC_META_SECURITY,
    CAP_EXEC_META_SECURITY_DEVICES_V1,
    CAP_EXEC_META_SETSDEFAULTPATH,
    CAP_EXEC_META_ULIMIT,
    CAP_EXEC_META_CDI,
    CAP_EXEC_META_REMOVEMOUNTSTUBS_RECURSIVE,
    CAP_EXEC_META_LINUX_RESOURCES,
    CAP_EXEC_MOUNT_BIND,
    CAP_EXEC_MOUNT_BIND_READWRITE_NOOUTPUT,
    CAP_EXEC_MOUNT_CACHE,
    CAP_EXEC_MOUNT_CACHE_SHARING,
    CAP_EXEC_MOUNT_SELECTOR,
    CAP_EXEC_MOUNT_TMPFS,
    CAP_EXEC_MOUNT_TMPFS_SIZE,
    CAP_EXEC_MOUNT_SECRET,
    CAP_EXEC_MOUNT_SSH,
    CAP_EXEC_MOUNT_CACHE_CONTENT,
    CAP_EXEC_CGROUP,
    CAP_EXEC_SECRETENV,
    CAP_EXEC_VALIDEXITCODE,
    CAP_FILE_BASE,
    CAP_FILE_RM_WILDCARD,
    CAP_FILE_COPY_INCLUDEEXCLUDEPATTERNS,
    CAP_FILE_COPY_REQUIREDPATHS,
    CAP_FILE_RM_NOFOLLOWSYMLINK,
    CAP_FILE_COPY_ALWAYSREPLACEEXISTINGDESTPATHS,
    CAP_FILE_COPY_MODESTRING,
    CAP_FILE_SYMLINK_CREATE,
    CAP_CONSTRAINTS,
    CAP_PLATFORM,
    CAP_META_IGNORECACHE,
    CAP_META_DESCRIPTION,
    CAP_META_EXPORTCACHE,
    CAP_CACHE_GHA,
    CAP_CACHE_S3,
    CAP_CACHE_AZBLOB,
    CAP_MERGEOP,
    CAP_DIFFOP,
    CAP_PASSTHROUGHOP,
    CAP_EXPORTER_IMAGE_ANNOTATIONS,
    CAP_EXPORTER_IMAGE_ATTESTATIONS,
    CAP_EXPORTER_SOURCEDATEEPOCH,
    CAP_EXPORTER_MULTIPLE,
    CAP_EXPORTER_SESSION,
    CAP_SOURCE_POLICY,
    CAP_SOURCE_POLICY_SESSION,
    CAP_GC_FREESPACEFILTER,
    CAP_HISTORY_FILTER,
];

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn ids_are_unique() {
        let mut ids = ALL.to_vec();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ALL.len());
    }
}
