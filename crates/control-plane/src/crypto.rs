//! Encryption at rest of static provider credentials (AES-256-GCM).
//!
//! Stored form: `enc:v2:<key id>:<base64(nonce || ciphertext)>`, where the key id is the first
//! 8 hex digits of SHA-256 of the key. Each ciphertext is bound to its owner and field by
//! AES-GCM's associated data (`proxy:<gateway>/<name>` + `routes[<route>].auth.api_key`,
//! `semantic_service:<name>` + `api_key`): a ciphertext copied into another proxy's row, or
//! another field, does not decrypt. (`enc:v1:` secrets, written before the binding, are still
//! read, and re-encrypted as `v2` at start-up.) The keyring holds the current key (used to
//! encrypt) and any previous keys (used only to decrypt); at start-up the control plane
//! re-encrypts every secret that is not `v2` under the current key, so a rotation is: start
//! with the new key as current and the old one in `--previous-encryption-keys`, then drop the
//! old one.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use sha2::{Digest, Sha256};
use switchyard_model::{ProxySpec, Secret, SemanticService};

/// Secrets bound to their owner and field (associated data).
const PREFIX: &str = "enc:v2:";
/// Secrets written before the binding: read, never written.
const LEGACY_PREFIX: &str = "enc:v1:";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption key must be 32 bytes encoded as base64 (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("stored secret is not in the encrypted form")]
    NotEncrypted,
    #[error("stored secret was encrypted with key {0}, which is not in the keyring")]
    UnknownKey(String),
    #[error(
        "stored secret could not be decrypted (wrong key, corrupted data, or a secret moved to another owner or field)"
    )]
    Corrupt,
    #[error("a secret could not be encrypted")]
    Encrypt,
}

/// The associated data binding a ciphertext to its owner and field.
fn associated_data(owner: &str, field: &str) -> Vec<u8> {
    format!("switchyard-secret:v2\0{owner}\0{field}").into_bytes()
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

/// The current key plus previous ones kept for decryption.
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .finish_non_exhaustive()
    }
}

fn parse_key(b64: &str) -> Result<Key, CryptoError> {
    let bytes = B64.decode(b64.trim()).map_err(|_| CryptoError::BadKey)?;
    if bytes.len() != 32 {
        return Err(CryptoError::BadKey);
    }
    let digest = Sha256::digest(&bytes);
    let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
    Ok(Key { id, cipher })
}

impl Keyring {
    pub fn new(current_b64: &str, previous_b64: &[String]) -> Result<Self, CryptoError> {
        Ok(Self {
            current: parse_key(current_b64)?,
            previous: previous_b64
                .iter()
                .map(|k| parse_key(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// A fresh random key, base64-encoded.
    pub fn generate_key() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        B64.encode(key)
    }

    /// Encrypts `secret` under the current key, bound to `owner` and `field`. A failure is
    /// an error, never a stored blob.
    pub fn encrypt(
        &self,
        secret: &Secret,
        owner: &str,
        field: &str,
    ) -> Result<Secret, CryptoError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let aad = associated_data(owner, field);
        let ct = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(Secret::new(format!(
            "{PREFIX}{}:{}",
            self.current.id,
            B64.encode(blob)
        )))
    }

    /// Decrypts a stored secret of `owner`'s `field`.
    pub fn decrypt(
        &self,
        stored: &Secret,
        owner: &str,
        field: &str,
    ) -> Result<Secret, CryptoError> {
        let text = stored.expose();
        let (rest, aad) = if let Some(rest) = text.strip_prefix(PREFIX) {
            (rest, associated_data(owner, field))
        } else if let Some(rest) = text.strip_prefix(LEGACY_PREFIX) {
            (rest, Vec::new())
        } else {
            return Err(CryptoError::NotEncrypted);
        };
        let (id, data) = rest.split_once(':').ok_or(CryptoError::Corrupt)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let blob = B64.decode(data).map_err(|_| CryptoError::Corrupt)?;
        if blob.len() < 12 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ct) = blob.split_at(12);
        let pt = key
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(pt)
            .map(Secret::new)
            .map_err(|_| CryptoError::Corrupt)
    }

    /// Whether a stored secret is in the current form (`v2`) under the current key.
    pub fn is_current(&self, stored: &Secret) -> bool {
        stored
            .expose()
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(id, _)| id == self.current.id)
    }

    /// A proxy spec with every static secret encrypted, bound to the proxy and its field.
    pub fn encrypt_proxy(&self, spec: ProxySpec) -> Result<ProxySpec, CryptoError> {
        let owner = spec.secret_owner();
        spec.try_map_secrets_at(|field, s| self.encrypt(&s, &owner, field))
    }

    /// A stored proxy spec with every static secret decrypted.
    pub fn decrypt_proxy(&self, spec: ProxySpec) -> Result<ProxySpec, CryptoError> {
        let owner = spec.secret_owner();
        spec.try_map_secrets_at(|field, s| self.decrypt(&s, &owner, field))
    }

    /// A semantic service with its key (if any) encrypted, bound to the service.
    pub fn encrypt_service(
        &self,
        service: SemanticService,
    ) -> Result<SemanticService, CryptoError> {
        let owner = service.secret_owner();
        service.try_map_secrets_at(|field, s| self.encrypt(&s, &owner, field))
    }

    /// A stored semantic service with its key (if any) decrypted.
    pub fn decrypt_service(
        &self,
        service: SemanticService,
    ) -> Result<SemanticService, CryptoError> {
        let owner = service.secret_owner();
        service.try_map_secrets_at(|field, s| self.decrypt(&s, &owner, field))
    }

    /// `secret` of `owner`'s `field` moved to the current form and key, or `None` when it
    /// already is.
    pub fn rotate(
        &self,
        stored: &Secret,
        owner: &str,
        field: &str,
    ) -> Result<Option<Secret>, CryptoError> {
        if self.is_current(stored) {
            return Ok(None);
        }
        let plain = self.decrypt(stored, owner, field)?;
        self.encrypt(&plain, owner, field).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "proxy:gw/p";
    const FIELD: &str = "routes[openai].auth.api_key";

    #[test]
    fn round_trip_and_rotation() {
        let old = Keyring::generate_key();
        let new = Keyring::generate_key();
        let ring_old = Keyring::new(&old, &[]).unwrap();
        let stored = ring_old
            .encrypt(&Secret::new("sk-123"), OWNER, FIELD)
            .unwrap();
        assert!(stored.expose().starts_with("enc:v2:"));
        assert!(!stored.expose().contains("sk-123"));
        assert_eq!(
            ring_old.decrypt(&stored, OWNER, FIELD).unwrap().expose(),
            "sk-123"
        );

        let ring_new = Keyring::new(&new, std::slice::from_ref(&old)).unwrap();
        assert!(!ring_new.is_current(&stored));
        let re = ring_new.rotate(&stored, OWNER, FIELD).unwrap().unwrap();
        assert!(ring_new.is_current(&re));
        assert!(ring_new.rotate(&re, OWNER, FIELD).unwrap().is_none());
        assert_eq!(
            ring_new.decrypt(&re, OWNER, FIELD).unwrap().expose(),
            "sk-123"
        );

        let ring_other = Keyring::new(&new, &[]).unwrap();
        assert!(matches!(
            ring_other.decrypt(&stored, OWNER, FIELD),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_ciphertext_is_bound_to_its_owner_and_field() {
        let ring = Keyring::new(&Keyring::generate_key(), &[]).unwrap();
        let stored = ring.encrypt(&Secret::new("sk-123"), OWNER, FIELD).unwrap();
        // Copied into another proxy's row, or another field of the same proxy: refused.
        assert!(matches!(
            ring.decrypt(&stored, "proxy:gw/other", FIELD),
            Err(CryptoError::Corrupt)
        ));
        assert!(matches!(
            ring.decrypt(&stored, OWNER, "routes[other].auth.api_key"),
            Err(CryptoError::Corrupt)
        ));
        assert!(matches!(
            ring.decrypt(&stored, "semantic_service:gw", "api_key"),
            Err(CryptoError::Corrupt)
        ));
    }

    #[test]
    fn legacy_v1_secrets_are_read_and_rotated_to_v2() {
        let key = Keyring::generate_key();
        let ring = Keyring::new(&key, &[]).unwrap();
        // A v1 blob: no associated data.
        let parsed = parse_key(&key).unwrap();
        let nonce = [7u8; 12];
        let ct = parsed
            .cipher
            .encrypt(Nonce::from_slice(&nonce), b"sk-old".as_slice())
            .unwrap();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        let v1 = Secret::new(format!("enc:v1:{}:{}", parsed.id, B64.encode(blob)));
        assert!(!ring.is_current(&v1));
        assert_eq!(ring.decrypt(&v1, OWNER, FIELD).unwrap().expose(), "sk-old");
        let v2 = ring.rotate(&v1, OWNER, FIELD).unwrap().unwrap();
        assert!(v2.expose().starts_with("enc:v2:"));
        assert_eq!(ring.decrypt(&v2, OWNER, FIELD).unwrap().expose(), "sk-old");
    }

    #[test]
    fn refuses_bad_keys_and_tampering() {
        assert!(Keyring::new("short", &[]).is_err());
        assert!(Keyring::new(&B64.encode([0u8; 16]), &[]).is_err());
        let ring = Keyring::new(&Keyring::generate_key(), &[]).unwrap();
        let stored = ring.encrypt(&Secret::new("value"), OWNER, FIELD).unwrap();
        let mut tampered = stored.expose().to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(ring.decrypt(&Secret::new(tampered), OWNER, FIELD).is_err());
        assert!(matches!(
            ring.decrypt(&Secret::new("plain"), OWNER, FIELD),
            Err(CryptoError::NotEncrypted)
        ));
    }
}
