//! The system's TLS trust roots, read once per process.
//!
//! Every HTTP client (registries, the remote cache, `http(s)://` sources, pushes) would
//! otherwise read the system's CA store again when it is built: a few hundred files per
//! client, several clients per build, one set per build in the daemon. Here the store is read
//! the first time a client is made, and every client after that gets the same roots. Clients
//! verify servers against exactly these roots (webpki), which is what the platform verifier
//! does on Linux with the same store.

use std::sync::OnceLock;

static ROOTS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();

/// The DER encodings of the system's trust roots (empty when none could be read).
pub fn roots() -> &'static [Vec<u8>] {
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!("reading the system's TLS roots: {e}");
        }
        found.certs.into_iter().map(|c| c.to_vec()).collect()
    })
}

/// A `reqwest` client builder that trusts [`roots`]. Without any (no CA store on this
/// machine), the builder is reqwest's default, which fails the same way it always did.
pub fn client_builder() -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    let certs: Vec<reqwest::Certificate> = roots()
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect();
    if certs.is_empty() {
        builder
    } else {
        builder.tls_certs_only(certs)
    }
}

/// [`roots`] in `oci-client`'s form, for its `tls_certs_only`.
pub fn oci_roots() -> Vec<oci_client::client::Certificate> {
    roots()
        .iter()
        .map(|der| oci_client::client::Certificate {
            encoding: oci_client::client::CertificateEncoding::Der,
            data: der.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_read_once_and_clients_build_with_them() {
        let first = roots().as_ptr();
        assert_eq!(first, roots().as_ptr(), "the store is read once");
        // Debian's CA store is present wherever the suite runs (hack/setup.sh installs it).
        assert!(!roots().is_empty(), "no TLS roots found on this machine");
        assert!(client_builder().build().is_ok());
        assert_eq!(oci_roots().len(), roots().len());
    }
}
