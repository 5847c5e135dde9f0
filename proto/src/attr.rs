//! Well-known string keys and values: `SourceOp.attrs` (BuildKit `solver/pb/attr.go`),
//! `OpMetadata.description`, and source identifier schemes.
//!
//! Attribute constants are the key upper-cased with `.` turned into `_`, prefixed `ATTR_`.
//! Unknown attrs are ignored by the daemon but still part of the op digest.

// Source identifier schemes (`SourceOp.identifier` prefixes).

/// Registry image, always fully normalized: `docker-image://docker.io/library/alpine:latest`.
pub const SCHEME_DOCKER_IMAGE: &str = "docker-image://";
/// Client directory synced over the session: `local://<name>` (name = FileSync `dir-name`).
pub const SCHEME_LOCAL: &str = "local://";
/// Git repository: `git://<host>/<path>[#ref[:subdir]]`.
pub const SCHEME_GIT: &str = "git://";
/// HTTPS download.
pub const SCHEME_HTTPS: &str = "https://";
/// HTTP download.
pub const SCHEME_HTTP: &str = "http://";
/// OCI layout served by the client: `oci-layout://<store>@sha256:…`.
pub const SCHEME_OCI_LAYOUT: &str = "oci-layout://";

// OpMetadata.description keys.

/// Progress name of a vertex (`OpMetadata.description`).
pub const ATTR_LLB_CUSTOMNAME: &str = "llb.customname";
/// Dockerfile instruction that produced a vertex (`OpMetadata.description`).
pub const ATTR_DOCKERFILE_COMMAND: &str = "com.docker.dockerfile.v1.command";

// docker-image://

/// Image resolve mode: [`IMAGE_RESOLVEMODE_DEFAULT`], [`IMAGE_RESOLVEMODE_PULL`] or
/// [`IMAGE_RESOLVEMODE_LOCAL`].
pub const ATTR_IMAGE_RESOLVEMODE: &str = "image.resolvemode";
/// Resolve mode: use a local copy if the tag matches, else pull.
pub const IMAGE_RESOLVEMODE_DEFAULT: &str = "default";
/// Resolve mode: always pull.
pub const IMAGE_RESOLVEMODE_PULL: &str = "pull";
/// Resolve mode: prefer a local image.
pub const IMAGE_RESOLVEMODE_LOCAL: &str = "local";
/// Record type of the pulled image: `regular`, `internal` or `frontend`.
pub const ATTR_IMAGE_RECORDTYPE: &str = "image.recordtype";
/// Use only the first N layers of the image.
pub const ATTR_IMAGE_LAYERLIMIT: &str = "image.layerlimit";
/// Expected image digest.
pub const ATTR_IMAGE_CHECKSUM: &str = "image.checksum";

// local://

/// Session id serving the directory (optionally `prefix:id`).
pub const ATTR_LOCAL_SESSION: &str = "local.session";
/// Random value that only makes the digest unique when no session is given.
pub const ATTR_LOCAL_UNIQUE: &str = "local.unique";
/// Include patterns, JSON array. Note the singular key.
pub const ATTR_LOCAL_INCLUDEPATTERN: &str = "local.includepattern";
/// Exclude patterns (e.g. `.dockerignore` lines), JSON array.
pub const ATTR_LOCAL_EXCLUDEPATTERNS: &str = "local.excludepatterns";
/// Paths to transfer (symlinks followed), JSON array.
pub const ATTR_LOCAL_FOLLOWPATHS: &str = "local.followpaths";
/// Key under which the daemon keeps the synced copy between builds.
pub const ATTR_LOCAL_SHAREDKEYHINT: &str = "local.sharedkeyhint";
/// How changed files are detected: [`LOCAL_DIFFER_NONE`] or [`LOCAL_DIFFER_METADATA`].
pub const ATTR_LOCAL_DIFFER: &str = "local.differ";
/// Differ: copy without comparing.
pub const LOCAL_DIFFER_NONE: &str = "none";
/// Differ: compare metadata.
pub const LOCAL_DIFFER_METADATA: &str = "metadata";
/// Transfer only metadata for the directory.
pub const ATTR_LOCAL_METADATATRANSFER: &str = "local.metadatatransfer";
/// Paths excluded from metadata-only transfer.
pub const ATTR_LOCAL_METADATATRANSFEREXCLUDE: &str = "local.metadatatransferexclude";

// git://

/// Full remote URL when the identifier is abbreviated.
pub const ATTR_GIT_FULLURL: &str = "git.fullurl";
/// Keep the `.git` directory.
pub const ATTR_GIT_KEEPGITDIR: &str = "git.keepgitdir";
/// Secret id of the auth token (default `GIT_AUTH_TOKEN`).
pub const ATTR_GIT_AUTHTOKENSECRET: &str = "git.authtokensecret";
/// Secret id of the auth header (default `GIT_AUTH_HEADER`).
pub const ATTR_GIT_AUTHHEADERSECRET: &str = "git.authheadersecret";
/// Known SSH hosts.
pub const ATTR_GIT_KNOWNSSHHOSTS: &str = "git.knownsshhosts";
/// SSH agent socket id.
pub const ATTR_GIT_MOUNTSSHSOCK: &str = "git.mountsshsock";
/// Expected commit.
pub const ATTR_GIT_CHECKSUM: &str = "git.checksum";
/// Do not fetch submodules.
pub const ATTR_GIT_SKIPSUBMODULES: &str = "git.skipsubmodules";
/// Set file mtimes from the commit.
pub const ATTR_GIT_MTIME: &str = "git.mtime";

// http(s)://

/// Expected content digest.
pub const ATTR_HTTP_CHECKSUM: &str = "http.checksum";
/// Name of the downloaded file.
pub const ATTR_HTTP_FILENAME: &str = "http.filename";
/// Permission bits (parsed with base prefix, Go writes `0644` form).
pub const ATTR_HTTP_PERM: &str = "http.perm";
/// Owner uid of the downloaded file.
pub const ATTR_HTTP_UID: &str = "http.uid";
/// Owner gid of the downloaded file.
pub const ATTR_HTTP_GID: &str = "http.gid";
/// Secret id of the auth header.
pub const ATTR_HTTP_AUTHHEADERSECRET: &str = "http.authheadersecret";
/// Prefix of request header attrs: `http.header.<Name>`.
pub const ATTR_HTTP_HEADER_PREFIX: &str = "http.header.";

// oci-layout://

/// Session id serving the layout.
pub const ATTR_OCI_SESSION: &str = "oci.session";
/// Store id (`oci:<name>`).
pub const ATTR_OCI_STORE: &str = "oci.store";
/// Use only the first N layers.
pub const ATTR_OCI_LAYERLIMIT: &str = "oci.layerlimit";
