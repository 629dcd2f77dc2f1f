//! Certificates for TLS-terminating ports: found in the state by uuid or name, checked (the
//! chain parses, the key parses and belongs to the first certificate), and written as
//! `<name>-<content hash>.pem` (chain, then key) into a directory only this user can read.
//!
//! File names carry a hash of their content, so a changed certificate is a new file and a new
//! configuration (a reload), and the files the running HAProxy uses are never rewritten in place.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use event_bus::model::{Certificate, LbConfig};
use event_bus::Snapshot;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConfigError;

/// A PEM file for HAProxy. Its `Debug` never shows the content (it holds a private key).
#[derive(Clone, PartialEq, Eq)]
pub struct CertFile {
    /// The certificate's name in the state (for messages).
    pub name: String,
    /// `<sanitized name>-<hash>.pem`.
    pub file_name: String,
    pem: String,
}

impl fmt::Debug for CertFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertFile").field("name", &self.name).field("file_name", &self.file_name).finish()
    }
}

impl CertFile {
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

/// The certificates of an `lb_config`, the default one first (HAProxy serves the first
/// certificate of a bind line to clients whose SNI name no certificate covers).
pub fn load(lbc: &LbConfig, snap: &Snapshot) -> Result<Vec<CertFile>, ConfigError> {
    let mut wanted: Vec<(String, &str)> = Vec::new();
    if let Some(d) = lbc.default_cert.as_deref().filter(|d| !d.trim().is_empty()) {
        wanted.push(("default_cert".into(), d.trim()));
    }
    for (i, c) in lbc.certs.iter().enumerate() {
        wanted.push((format!("certs[{i}]"), c.trim()));
    }
    let mut out: Vec<CertFile> = Vec::new();
    for (field, id) in wanted {
        let cert =
            find(snap, id).ok_or_else(|| ConfigError::CertificateNotFound { field: field.clone(), name: id.into() })?;
        let file = check(&cert, &field)?;
        if !out.iter().any(|f| f.file_name == file.file_name) {
            out.push(file);
        }
    }
    Ok(out)
}

fn find(snap: &Snapshot, id: &str) -> Option<Certificate> {
    snap.certificate(id).or_else(|| snap.certificates().find(|c| c.name == id)).map(|c| Certificate::clone(c))
}

/// Parses the chain and the key and checks that they belong together.
pub fn check(cert: &Certificate, field: &str) -> Result<CertFile, ConfigError> {
    let bad = |reason: String| ConfigError::BadCertificate { field: field.into(), name: cert.name.clone(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("the certificate chain is not valid PEM ({e})")))?;
    if chain.is_empty() {
        return Err(bad("no certificate in `cert` (expected PEM `BEGIN CERTIFICATE` blocks)".into()));
    }
    // The error of a key that does not parse says nothing about its content, only its shape.
    let key = PrivateKeyDer::from_pem_slice(cert.key.expose().as_bytes())
        .map_err(|_| bad("the private key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".into()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| bad("the private key is of a kind TLS cannot use".into()))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(bad("the private key does not match the certificate".into()))
        }
        // Key kinds whose public half rustls cannot derive: `haproxy -c` still checks the pair.
        Err(rustls::Error::InconsistentKeys(_)) => {}
        Err(e) => return Err(bad(format!("the certificate cannot be read ({e})"))),
    }
    let mut pem = cert.cert.trim_end().to_string();
    pem.push('\n');
    pem.push_str(cert.key.expose().trim_end());
    pem.push('\n');
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pem.hash(&mut h);
    let safe: String = cert.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    Ok(CertFile { name: cert.name.clone(), file_name: format!("{safe}-{:016x}.pem", h.finish()), pem })
}

/// Creates `dir` with mode 0700 (and makes it 0700 if it existed).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes a file only its owner can read (0600), through a temporary name so HAProxy never
/// sees half a file.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes the certificate files that are not there yet.
pub fn write_all(dir: &Path, files: &[CertFile]) -> std::io::Result<()> {
    private_dir(dir)?;
    for f in files {
        let path = dir.join(&f.file_name);
        if !path.exists() {
            write_private(&path, &f.pem)?;
        }
    }
    Ok(())
}

/// Removes `.pem` and `.crtlist` files of `dir` that `keep` does not name.
pub fn remove_unused(dir: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if (name.ends_with(".pem") || name.ends_with(".crtlist")) && !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
