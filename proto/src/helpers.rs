//! Small conveniences on generated types: constructors, the `-1` sentinels, metadata merge.

use crate::pb;

impl pb::Input {
    /// An edge to output `index` of the op with digest `digest`.
    pub fn new(digest: impl Into<String>, index: i64) -> Self {
        Self {
            digest: digest.into(),
            index,
        }
    }
}

impl pb::Platform {
    /// A platform with only architecture and OS set (e.g. `"amd64"`, `"linux"`).
    pub fn new(architecture: impl Into<String>, os: impl Into<String>) -> Self {
        Self {
            architecture: architecture.into(),
            os: os.into(),
            ..Default::default()
        }
    }
}

impl pb::Op {
    /// The terminal op of a definition: exactly one input, nothing else.
    pub fn terminal(output: pb::Input) -> Self {
        Self {
            inputs: vec![output],
            ..Default::default()
        }
    }

    /// Whether this op has the terminal shape: exactly one input and no operation.
    ///
    /// Platform and constraints are not inspected; they carry no meaning on a terminal op.
    pub fn is_terminal(&self) -> bool {
        self.inputs.len() == 1 && self.op.is_none()
    }
}

impl pb::Mount {
    /// `input` value for a mount that starts empty.
    pub const SCRATCH_INPUT: i64 = -1;
    /// `output` value for a mount whose changes are not an op output
    /// (readonly, cache, tmpfs, secret, ssh).
    pub const NO_OUTPUT: i64 = -1;
}

impl pb::FileAction {
    /// `input`/`secondary_input` value meaning an empty filesystem.
    pub const SCRATCH: i64 = -1;
    /// `output` value for intermediate actions whose result is not exported.
    pub const NO_OUTPUT: i64 = -1;
}

impl pb::FileActionCopy {
    /// `mode` value that keeps the source permission bits (0 would mean `chmod 0000`).
    pub const KEEP_MODE: i32 = -1;
    /// `timestamp` value that keeps source mtimes (0 would mean 1970-01-01).
    pub const KEEP_TIMESTAMP: i64 = -1;
}

impl pb::OpMetadata {
    /// Folds `other` into `self` the way Go's `client/llb` merges metadata of one vertex:
    /// `ignore_cache` is or-ed, descriptions and caps are unioned (later wins per key),
    /// set sub-messages of `other` replace those of `self`.
    pub fn merge(&mut self, other: pb::OpMetadata) {
        self.ignore_cache |= other.ignore_cache;
        self.description.extend(other.description);
        if other.export_cache.is_some() {
            self.export_cache = other.export_cache;
        }
        self.caps.extend(other.caps.into_keys().map(|k| (k, true)));
        if other.progress_group.is_some() {
            self.progress_group = other.progress_group;
        }
        if other.linux_resources.is_some() {
            self.linux_resources = other.linux_resources;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::pb;

    #[test]
    fn merge_unions_maps_and_ors_flags() {
        let mut a = pb::OpMetadata {
            description: [("llb.customname".to_owned(), "a".to_owned())].into(),
            caps: [("source.local".to_owned(), true)].into(),
            ..Default::default()
        };
        a.merge(pb::OpMetadata {
            ignore_cache: true,
            description: [("x".to_owned(), "y".to_owned())].into(),
            caps: [("source.image".to_owned(), false)].into(),
            export_cache: Some(pb::ExportCache { value: true }),
            ..Default::default()
        });
        assert!(a.ignore_cache);
        assert_eq!(a.description.len(), 2);
        assert_eq!(
            a.caps.keys().collect::<Vec<_>>(),
            ["source.image", "source.local"]
        );
        assert!(a.caps.values().all(|v| *v));
        assert_eq!(a.export_cache, Some(pb::ExportCache { value: true }));
    }
}
