// Test code: a panic is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::certs::{BundleOptions, LocalCa, write_bundle};

fn bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options = BundleOptions {
        days: 30,
        control_plane_names: vec!["cp.example.internal".into()],
        gateway_names: vec![],
    };
    write_bundle(dir.path(), &options).unwrap();
    dir
}

fn message(e: TlsError) -> String {
    let text = e.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    text
}

#[test]
fn a_bundle_loads_and_is_never_overwritten() {
    let dir = bundle();
    let p = dir.path();
    certified_key(
        ("--tls-cert", &p.join("control-plane.crt")),
        ("--tls-key", &p.join("control-plane.key")),
    )
    .unwrap();
    certified_key(
        ("--tls-cert", &p.join("node.crt")),
        ("--tls-key", &p.join("node.key")),
    )
    .unwrap();
    read_roots("--client-ca", &p.join("ca.crt")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(p.join("ca.key")).unwrap();
    let options = BundleOptions {
        days: 1,
        control_plane_names: vec![],
        gateway_names: vec![],
    };
    let err = message(write_bundle(p, &options).unwrap_err());
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(p.join("ca.key")).unwrap(),
        before,
        "nothing overwritten"
    );
}

#[test]
fn certificate_problems_name_the_flag_the_file_and_the_reason() {
    let dir = bundle();
    let p = dir.path();
    let missing = p.join("nope.crt");
    let err = message(read_certs("--tls-cert", &missing).unwrap_err());
    assert!(
        err.starts_with("--tls-cert ") && err.contains("nope.crt") && err.contains("cannot read"),
        "{err}"
    );

    std::fs::write(p.join("junk.pem"), "hello, not a certificate\n").unwrap();
    let err = message(read_certs("--tls-cert", &p.join("junk.pem")).unwrap_err());
    assert!(
        err.contains("junk.pem") && err.contains("no certificate"),
        "{err}"
    );
    let err = message(read_key("--tls-key", &p.join("junk.pem")).unwrap_err());
    assert!(
        err.starts_with("--tls-key ") && err.contains("no private key"),
        "{err}"
    );

    // A certificate given as the key, and a key that belongs to another certificate.
    let err = message(read_key("--tls-key", &p.join("ca.crt")).unwrap_err());
    assert!(
        err.contains("ca.crt") && err.contains("no private key"),
        "{err}"
    );
    let err = message(
        certified_key(
            ("--tls-cert", &p.join("control-plane.crt")),
            ("--tls-key", &p.join("node.key")),
        )
        .unwrap_err(),
    );
    assert!(
        err.starts_with("--tls-key ")
            && err.contains("node.key")
            && err.contains("does not match the certificate in")
            && err.contains("control-plane.crt"),
        "{err}"
    );

    let tls = ServerTls::new(p.join("control-plane.crt"), p.join("control-plane.key"))
        .with_client_ca(p.join("missing-ca.crt"));
    let err = message(tls.server_config(alpn_h2_http11()).unwrap_err());
    assert!(
        err.starts_with("--client-ca ") && err.contains("missing-ca.crt"),
        "{err}"
    );
}

#[test]
fn a_changed_certificate_is_served_and_a_broken_change_keeps_the_old_one() {
    let dir = bundle();
    let p = dir.path();
    let (cert, key) = (p.join("served.crt"), p.join("served.key"));
    std::fs::copy(p.join("control-plane.crt"), &cert).unwrap();
    std::fs::copy(p.join("control-plane.key"), &key).unwrap();
    let (_config, reloading) = ServerTls::new(&cert, &key)
        .server_config(alpn_h2_http11())
        .unwrap();
    let first = reloading.chain();
    assert!(
        !reloading.reload_if_changed().unwrap(),
        "unchanged files are not re-read"
    );

    // A new certificate from another CA.
    let other = LocalCa::new("another CA", 5)
        .unwrap()
        .server("cp", &["localhost".into()])
        .unwrap();
    std::fs::write(&cert, &other.cert_pem).unwrap();
    // Half-written: the new certificate with the old key is refused; the old pair stays.
    let err = message(reloading.reload_if_changed().unwrap_err());
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(reloading.chain(), first);
    std::fs::write(&key, &other.key_pem).unwrap();
    assert!(reloading.reload_if_changed().unwrap());
    assert_ne!(reloading.chain(), first);
    assert_eq!(reloading.chain(), read_certs("--tls-cert", &cert).unwrap());
}
