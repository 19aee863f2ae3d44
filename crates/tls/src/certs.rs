//! A local certificate authority and the certificates a Switchyard fleet uses, for trying
//! TLS and mTLS (`switchyard certs`) and for tests. Production fleets usually get theirs
//! from their own PKI or cert-manager; these files have the same shape.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that signs server and client certificates.
pub struct LocalCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
    days: i64,
}

fn rcgen_error(what: &str, e: rcgen::Error) -> TlsError {
    TlsError::Other(format!("cannot make the {what}: {e}"))
}

fn params(
    common_name: &str,
    sans: &[String],
    days: i64,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Switchyard (local)");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    Ok(params)
}

impl LocalCa {
    /// A new CA whose certificates are valid for `days`.
    pub fn new(name: &str, days: i64) -> Result<LocalCa, TlsError> {
        let key = KeyPair::generate().map_err(|e| rcgen_error("CA key", e))?;
        let key_pem = key.serialize_pem();
        let mut p = params(name, &[], days).map_err(|e| rcgen_error("CA certificate", e))?;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(p, key).map_err(|e| rcgen_error("CA certificate", e))?;
        Ok(LocalCa {
            issuer,
            key_pem,
            days,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issue(
        &self,
        common_name: &str,
        sans: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, TlsError> {
        let what = format!("certificate for {common_name}");
        let key = KeyPair::generate().map_err(|e| rcgen_error(&what, e))?;
        let mut p = params(common_name, sans, self.days).map_err(|e| rcgen_error(&what, e))?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(|e| rcgen_error(&what, e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for `names` (DNS names and IP addresses).
    pub fn server(&self, common_name: &str, names: &[String]) -> Result<Issued, TlsError> {
        self.issue(common_name, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (a gateway node's, for mTLS).
    pub fn client(&self, common_name: &str) -> Result<Issued, TlsError> {
        self.issue(
            common_name,
            &[common_name.to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// The DNS names the control plane answers to in deploy/kubernetes, plus loopback.
pub fn default_control_plane_names() -> Vec<String> {
    [
        "localhost",
        "127.0.0.1",
        "::1",
        "switchyard-control-plane",
        "switchyard-control-plane.switchyard",
        "switchyard-control-plane.switchyard.svc",
        "switchyard-control-plane.switchyard.svc.cluster.local",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The DNS names of the gateway's traffic listener by default.
pub fn default_gateway_names() -> Vec<String> {
    [
        "localhost",
        "127.0.0.1",
        "::1",
        "switchyard-gateway",
        "switchyard-gateway.switchyard",
        "switchyard-gateway.switchyard.svc",
        "switchyard-gateway.switchyard.svc.cluster.local",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// What [`write_bundle`] writes.
#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub days: i64,
    /// Extra names for the control plane's certificate.
    pub control_plane_names: Vec<String>,
    /// Extra names for the gateway traffic certificate.
    pub gateway_names: Vec<String>,
}

/// The files of a bundle, relative to its directory: the CA (`ca.crt`, `ca.key`), the
/// control plane's server certificate, a node's client certificate and a gateway traffic
/// certificate -- the names deploy/kubernetes/base/secrets expects.
pub const BUNDLE_FILES: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "control-plane.crt",
    "control-plane.key",
    "node.crt",
    "node.key",
    "gateway.crt",
    "gateway.key",
];

/// Writes a new CA and the fleet's certificates into `dir` (created if missing). Refuses
/// to overwrite any existing file, so a key is never lost. Keys are written mode 0600.
pub fn write_bundle(dir: &Path, options: &BundleOptions) -> Result<Vec<PathBuf>, TlsError> {
    let ca = LocalCa::new("Switchyard local CA", options.days)?;
    write_bundle_with(dir, options, &ca)
}

/// [`write_bundle`] with a given CA (tests keep it to sign renewals).
pub fn write_bundle_with(
    dir: &Path,
    options: &BundleOptions,
    ca: &LocalCa,
) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TlsError::Other(format!("--out {}: cannot create: {e}", dir.display())))?;
    let paths: Vec<PathBuf> = BUNDLE_FILES.iter().map(|f| dir.join(f)).collect();
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(TlsError::Other(format!(
            "--out {}: {} already exists (remove it or choose another directory)",
            dir.display(),
            existing.display()
        )));
    }
    let mut cp_names = default_control_plane_names();
    cp_names.extend(options.control_plane_names.iter().cloned());
    let mut gw_names = default_gateway_names();
    gw_names.extend(options.gateway_names.iter().cloned());
    let control_plane = ca.server("switchyard-control-plane", &cp_names)?;
    let node = ca.client("switchyard-node")?;
    let gateway = ca.server("switchyard-gateway", &gw_names)?;
    let contents = [
        ca.cert_pem(),
        ca.key_pem().to_owned(),
        control_plane.cert_pem,
        control_plane.key_pem,
        node.cert_pem,
        node.key_pem,
        gateway.cert_pem,
        gateway.key_pem,
    ];
    for (path, body) in paths.iter().zip(contents) {
        write_file(path, &body, path.extension().is_some_and(|e| e == "key"))?;
    }
    Ok(paths)
}

fn write_file(path: &Path, body: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(path)
        .map_err(|e| TlsError::Other(format!("{}: cannot create: {e}", path.display())))?;
    file.write_all(body.as_bytes())
        .map_err(|e| TlsError::Other(format!("{}: cannot write: {e}", path.display())))
}
