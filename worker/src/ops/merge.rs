//! MergeOp: the inputs' filesystems stacked, input 0 at the bottom. Nothing runs: the result is
//! the concatenation of the inputs' layer chains, which is what applying them in order means
//! (later inputs win, their whiteouts delete). A snapshot is made only if something executes on
//! the result ([`crate::Worker::ensure_snapshot`]).

use memobuild_proto::pb;

use crate::ops::mounts::mount_input;
use crate::solver::{FsRef, Output, Solve, SolveError};

impl Solve {
    pub(crate) async fn merge(
        &self,
        digest: &str,
        merge: pb::MergeOp,
        inputs: Vec<Output>,
    ) -> Result<Vec<Output>, SolveError> {
        if merge.inputs.is_empty() {
            return Err(self.error(digest, "merge op has no inputs".into()));
        }
        let mut layers = Vec::new();
        for (k, mi) in merge.inputs.iter().enumerate() {
            match mount_input(&inputs, mi.input).map_err(|m| self.error(digest, m))? {
                Output::Fs(fs) => layers.extend(fs.layers),
                Output::Local(_) => {
                    return Err(self.error(
                        digest,
                        format!(
                            "merge input {k} is a local directory; copy it into a filesystem first"
                        ),
                    ));
                }
            }
        }
        Ok(vec![Output::Fs(FsRef { layers })])
    }
}
