//! Encryption at rest of static provider credentials (AES-256-GCM).
//!
//! Stored form: `enc:v1:<key id>:<base64(nonce || ciphertext)>`, where the key id is the first
//! 8 hex digits of SHA-256 of the key. The keyring holds the current key (used to encrypt)
//! and any previous keys (used only to decrypt); at start-up the control plane re-encrypts
//! every secret that is not under the current key, so a rotation is: start with the new key
//! as current and the old one in `--previous-encryption-keys`, then drop the old one.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use sha2::{Digest, Sha256};
use switchyard_model::Secret;

const PREFIX: &str = "enc:v1:";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption key must be 32 bytes encoded as base64 (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("stored secret is not in the encrypted form")]
    NotEncrypted,
    #[error("stored secret was encrypted with key {0}, which is not in the keyring")]
    UnknownKey(String),
    #[error("stored secret could not be decrypted (wrong key or corrupted data)")]
    Corrupt,
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

    pub fn encrypt(&self, secret: &Secret) -> Secret {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption with a valid key and a 12-byte nonce cannot fail for in-memory buffers.
        let ct = self
            .current
            .cipher
            .encrypt(Nonce::from_slice(&nonce), secret.expose().as_bytes())
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Secret::new(format!("{PREFIX}{}:{}", self.current.id, B64.encode(blob)))
    }

    pub fn decrypt(&self, stored: &Secret) -> Result<Secret, CryptoError> {
        let rest = stored
            .expose()
            .strip_prefix(PREFIX)
            .ok_or(CryptoError::NotEncrypted)?;
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
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(pt)
            .map(Secret::new)
            .map_err(|_| CryptoError::Corrupt)
    }

    /// Whether a stored secret is encrypted under the current key.
    pub fn is_current(&self, stored: &Secret) -> bool {
        stored
            .expose()
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(id, _)| id == self.current.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rotation() {
        let old = Keyring::generate_key();
        let new = Keyring::generate_key();
        let ring_old = Keyring::new(&old, &[]).unwrap();
        let stored = ring_old.encrypt(&Secret::new("sk-123"));
        assert!(stored.expose().starts_with("enc:v1:"));
        assert!(!stored.expose().contains("sk-123"));
        assert_eq!(ring_old.decrypt(&stored).unwrap().expose(), "sk-123");

        let ring_new = Keyring::new(&new, std::slice::from_ref(&old)).unwrap();
        assert!(!ring_new.is_current(&stored));
        assert_eq!(ring_new.decrypt(&stored).unwrap().expose(), "sk-123");
        let re = ring_new.encrypt(&ring_new.decrypt(&stored).unwrap());
        assert!(ring_new.is_current(&re));

        let ring_other = Keyring::new(&new, &[]).unwrap();
        assert!(matches!(
            ring_other.decrypt(&stored),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn refuses_bad_keys_and_tampering() {
        assert!(Keyring::new("short", &[]).is_err());
        assert!(Keyring::new(&B64.encode([0u8; 16]), &[]).is_err());
        let ring = Keyring::new(&Keyring::generate_key(), &[]).unwrap();
        let stored = ring.encrypt(&Secret::new("value"));
        let mut tampered = stored.expose().to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(ring.decrypt(&Secret::new(tampered)).is_err());
        assert!(matches!(
            ring.decrypt(&Secret::new("plain")),
            Err(CryptoError::NotEncrypted)
        ));
    }
}
