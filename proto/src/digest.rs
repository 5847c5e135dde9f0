//! Op digests: sha256 over the exact marshalled bytes.

use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb;

/// Prefix of every digest string this crate produces.
pub const DIGEST_PREFIX: &str = "sha256:";

/// Returns BuildKit's digest of `bytes`: `"sha256:" + lowercase hex(sha256(bytes))`.
///
/// For an op this must be applied to the exact bytes placed in `Definition.def`;
/// see [`encode_op`].
pub fn digest_of(bytes: &[u8]) -> String {
    let sum = Sha256::digest(bytes);
    let mut out = String::with_capacity(DIGEST_PREFIX.len() + 64);
    out.push_str(DIGEST_PREFIX);
    out.push_str(&hex::encode(sum));
    out
}

/// Encodes `op` once and returns its bytes together with their digest.
///
/// Keep the returned bytes: re-encoding the op later may not reproduce them
/// byte for byte (e.g. after a decode that dropped unknown fields).
pub fn encode_op(op: &pb::Op) -> (Vec<u8>, String) {
    let bytes = op.encode_to_vec();
    let digest = digest_of(&bytes);
    (bytes, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_sha256_of_nothing() {
        assert_eq!(
            digest_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn digest_of_known_op_matches_sha256_of_exact_bytes() {
        let op = pb::Op {
            inputs: vec![pb::Input::new("sha256:abc", 1)],
            ..Default::default()
        };
        let (bytes, digest) = encode_op(&op);
        // Input{digest:"sha256:abc", index:1} inside Op field 1.
        let expected: &[u8] = &[
            0x0a, 0x0e, 0x0a, 0x0a, b's', b'h', b'a', b'2', b'5', b'6', b':', b'a', b'b', b'c',
            0x10, 0x01,
        ];
        assert_eq!(bytes, expected);
        assert_eq!(
            digest,
            format!("sha256:{}", hex::encode(Sha256::digest(expected)))
        );
        // Stable across runs: pinned value (computed independently with Python's hashlib).
        assert_eq!(
            digest,
            "sha256:0c672fa2f5a391e2fed1004411c7bae6928a54fdf64adb5e0e58bf39237cf661"
        );
        assert_eq!(encode_op(&op).1, digest);
        assert_eq!(
            digest,
            "sha256:".to_owned() + &hex::encode(Sha256::digest(op.encode_to_vec()))
        );
        assert!(
            digest[DIGEST_PREFIX.len()..]
                .chars()
                .all(|c| matches!(c, '0'..='9' | 'a'..='f'))
        );
        assert_eq!(digest.len(), DIGEST_PREFIX.len() + 64);
    }
}
