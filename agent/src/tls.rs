//! TLS for pushes to `https://` pickers. With `--ca-file`, a rustls configuration (the aws-lc-rs
//! provider, as reqwest's own) that trusts only that bundle's CAs; without it, reqwest's own rustls
//! setup, which verifies against the system's roots (rustls-platform-verifier).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The crypto provider every TLS connection of the agent uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM bundle of CA certificates; the error names the file and what is wrong with it.
pub fn load_ca_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| format!("{shown}: certificate {}: {e}", index + 1))?;
        roots
            .add(cert)
            .map_err(|e| format!("{shown}: certificate {}: {e}", index + 1))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\" blocks)"
        ));
    }
    Ok(roots)
}

/// A client configuration that trusts exactly `roots` and speaks HTTP/1.1 (one small POST per
/// interval gains nothing from HTTP/2).
pub fn client_config(roots: Arc<RootCertStore>) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Whether `e`'s causes include a certificate the verifier refused.
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(rustls::Error::InvalidCertificate(_)) = c.downcast_ref::<rustls::Error>() {
            return true;
        }
        // tokio-rustls hands rustls errors up wrapped in io::Error.
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && is_certificate_error(inner)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("inferpick-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_ca_bundle_loads_every_certificate() {
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap();
        let path = temp(
            "two.pem",
            format!("{}{}", a.cert.pem(), b.cert.pem()).as_bytes(),
        );
        assert_eq!(load_ca_file(&path).unwrap().len(), 2);
    }

    #[test]
    fn bad_ca_files_are_named_with_the_problem() {
        let missing = load_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            missing.contains("/nonexistent/ca.pem") && missing.contains("cannot read"),
            "{missing}"
        );
        let empty = temp("empty.pem", b"not a certificate\n");
        let err = load_ca_file(&empty).unwrap_err();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let garbage = temp(
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let err = load_ca_file(&garbage).unwrap_err();
        assert!(
            err.contains("garbage.pem") && err.contains("certificate 1"),
            "{err}"
        );
    }
}
