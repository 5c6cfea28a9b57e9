//! Data keys and the sealed formats. A sealed value is `salt (16) ‖ nonce (12) ‖ AES-256-GCM ciphertext and tag`,
//! base64 encoded, behind a versioned marker: a JSON value becomes `{"ordo:enc:v1": "<base64>"}` (an object, so
//! columns that must hold objects still do), a text value `ordo:enc:v1:<base64>`.
//!
//! Nonces are random. Random 96-bit nonces are safe for about 2^32 messages per key, which one busy account
//! would reach in days; so a value is never sealed under the data key itself but under a subkey derived from it
//! (HKDF-SHA256) with a random 128-bit salt that a process changes every [`SUBKEY_USES`] values. The salt travels
//! in the value; readers derive each salt's subkey once and keep it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;
use rand::RngCore;
use ring::aead::{Aad as RingAad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use serde_json::Value;

use super::{Aad, Error, Result};

/// The key of the one-entry object a sealed JSON value is stored as.
pub const JSON_TAG: &str = "ordo:enc:v1";
/// The prefix of a sealed text value.
pub const TEXT_PREFIX: &str = "ordo:enc:v1:";

const SALT_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Values sealed under one subkey before a process draws a new salt: far below the 2^32 random-nonce bound.
const SUBKEY_USES: u64 = 1 << 24;
/// Subkeys of other salts kept per data key; each writer process adds one per [`SUBKEY_USES`] values.
const MAX_OPENERS: usize = 4096;

/// A data key: the root secret of one account, and the subkeys derived from it.
pub struct DataKey {
    root: [u8; 32],
    sealer: Mutex<Sealer>,
    openers: RwLock<HashMap<[u8; SALT_LEN], Arc<LessSafeKey>>>,
}

struct Sealer {
    salt: [u8; SALT_LEN],
    key: Arc<LessSafeKey>,
    uses: u64,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(***)")
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

fn subkey(root: &[u8; 32], salt: &[u8; SALT_LEN]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(root);
    let okm = prk
        .expand(&[b"ordo data subkey v1"], &AES_256_GCM)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// AES-256-GCM of `plain` under `key` with a random nonce: `nonce ‖ ciphertext ‖ tag`.
pub(super) fn seal_with(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = random();
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            RingAad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .expect("AES-GCM seals any input shorter than 64 GiB");
    out.extend_from_slice(tag.as_ref());
    out
}

/// The inverse of [`seal_with`]; `None` when authentication fails.
pub(super) fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[..NONCE_LEN]).ok()?;
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let plain = key.open_in_place(nonce, RingAad::from(aad), &mut buf).ok()?;
    let n = plain.len();
    buf.truncate(n);
    Some(buf)
}

/// An AES-256 key for wrapping (master keys).
pub(super) fn aes_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"))
}

impl DataKey {
    /// A new random data key.
    pub fn generate() -> Self {
        Self::from_bytes(random())
    }

    /// The key from its 32 secret bytes (unwrapped).
    pub(super) fn from_bytes(root: [u8; 32]) -> Self {
        let salt = random();
        let key = Arc::new(subkey(&root, &salt));
        DataKey {
            sealer: Mutex::new(Sealer {
                key: key.clone(),
                salt,
                uses: 0,
            }),
            // The sealing subkey opens too, so opening never waits on the sealer's lock.
            openers: RwLock::new(HashMap::from([(salt, key)])),
            root,
        }
    }

    /// The secret bytes, to wrap.
    pub(super) fn secret(&self) -> &[u8; 32] {
        &self.root
    }

    /// Seals `plain` bound to `aad`: `salt ‖ nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let (salt, key) = {
            // A poisoned lock only means another thread panicked mid-count; the state is still usable.
            let mut s = self.sealer.lock().unwrap_or_else(|p| p.into_inner());
            if s.uses >= SUBKEY_USES {
                s.salt = random();
                s.key = Arc::new(subkey(&self.root, &s.salt));
                s.uses = 0;
                self.remember_opener(s.salt, s.key.clone());
            }
            s.uses += 1;
            (s.salt, s.key.clone())
        };
        let body = seal_with(&key, aad, plain);
        let mut out = Vec::with_capacity(SALT_LEN + body.len());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`DataKey::seal`] returned; `None` when it was altered or `aad` is not the one it was sealed with.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let salt: [u8; SALT_LEN] = sealed.get(..SALT_LEN)?.try_into().ok()?;
        let key = self.opener(&salt);
        open_with(&key, aad, &sealed[SALT_LEN..])
    }

    fn opener(&self, salt: &[u8; SALT_LEN]) -> Arc<LessSafeKey> {
        if let Some(k) = self.openers.read().unwrap_or_else(|p| p.into_inner()).get(salt) {
            return k.clone();
        }
        let key = Arc::new(subkey(&self.root, salt));
        self.remember_opener(*salt, key.clone());
        key
    }

    fn remember_opener(&self, salt: [u8; SALT_LEN], key: Arc<LessSafeKey>) {
        let mut map = self.openers.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_OPENERS {
            map.clear();
        }
        map.insert(salt, key);
    }

    /// Seals a JSON value as `{"ordo:enc:v1": "<base64>"}`.
    pub fn seal_json(&self, aad: &Aad<'_>, v: &Value) -> Value {
        let plain = serde_json::to_vec(v).expect("a JSON value serialises");
        let sealed = B64.encode(self.seal(&aad.bytes(), &plain));
        let mut m = serde_json::Map::with_capacity(1);
        m.insert(JSON_TAG.to_owned(), Value::String(sealed));
        Value::Object(m)
    }

    /// Opens a value from [`DataKey::seal_json`]; a value that is not sealed is returned as it is.
    pub fn open_json(&self, aad: &Aad<'_>, v: Value) -> Result<Value> {
        let Some(b64) = sealed_json_body(&v) else {
            return Ok(v);
        };
        let plain = self.open_body(aad, b64)?;
        serde_json::from_slice(&plain).map_err(|_| Error::Malformed {
            what: aad.to_string(),
            reason: "the plaintext is not JSON",
        })
    }

    /// Seals a text value as `ordo:enc:v1:<base64>`.
    pub fn seal_text(&self, aad: &Aad<'_>, s: &str) -> String {
        let sealed = self.seal(&aad.bytes(), s.as_bytes());
        let mut out = String::with_capacity(TEXT_PREFIX.len() + sealed.len() * 4 / 3 + 4);
        out.push_str(TEXT_PREFIX);
        B64.encode_string(sealed, &mut out);
        out
    }

    /// Opens a value from [`DataKey::seal_text`]; a value that is not sealed is returned as it is.
    pub fn open_text(&self, aad: &Aad<'_>, s: String) -> Result<String> {
        let Some(b64) = s.strip_prefix(TEXT_PREFIX) else {
            return Ok(s);
        };
        let plain = self.open_body(aad, b64)?;
        String::from_utf8(plain).map_err(|_| Error::Malformed {
            what: aad.to_string(),
            reason: "the plaintext is not UTF-8",
        })
    }

    fn open_body(&self, aad: &Aad<'_>, b64: &str) -> Result<Vec<u8>> {
        let sealed = B64.decode(b64).map_err(|_| Error::Malformed {
            what: aad.to_string(),
            reason: "not base64",
        })?;
        self.open(&aad.bytes(), &sealed)
            .ok_or_else(|| Error::Undecryptable { what: aad.to_string() })
    }
}

/// The base64 body of a sealed JSON value.
pub(super) fn sealed_json_body(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get(JSON_TAG)?.as_str(),
        _ => None,
    }
}

/// Whether a JSON value is sealed.
pub fn is_sealed_json(v: &Value) -> bool {
    sealed_json_body(v).is_some()
}

/// Whether a text value is sealed.
pub fn is_sealed_text(s: &str) -> bool {
    s.starts_with(TEXT_PREFIX)
}

/// Encodes bytes as the sealed formats do.
#[cfg(test)]
pub(super) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes what [`b64`] encoded.
pub(super) fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ARGS: Aad<'static> = Aad {
        account: "acme",
        table: "job",
        row: &["7"],
        field: "args",
    };

    /// A sealed JSON value opens to the original and shows none of it.
    #[test]
    fn json_round_trips_and_hides_the_plaintext() {
        let k = DataKey::generate();
        let v = json!({"customer": "MARKER-Zebra", "n": [1, 2]});
        let sealed = k.seal_json(&ARGS, &v);
        assert!(is_sealed_json(&sealed));
        assert!(!sealed.to_string().contains("Zebra"));
        assert_eq!(k.open_json(&ARGS, sealed).unwrap(), v);
    }

    /// Two seals of one value differ (random nonces), and both open.
    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let k = DataKey::generate();
        let a = k.seal_text(&ARGS, "same");
        let b = k.seal_text(&ARGS, "same");
        assert_ne!(a, b);
        assert_eq!(k.open_text(&ARGS, a).unwrap(), "same");
        assert_eq!(k.open_text(&ARGS, b).unwrap(), "same");
    }

    /// A ciphertext moved to another row, field or account, or opened with another account's key, is refused
    /// with an error naming the value.
    #[test]
    fn moved_ciphertext_does_not_open() {
        let k = DataKey::generate();
        let sealed = k.seal_json(&ARGS, &json!({"x": 1}));
        for other in [
            Aad::new("acme", "job", &["8"], "args"),
            Aad::new("acme", "job", &["7"], "result"),
            Aad::new("other", "job", &["7"], "args"),
        ] {
            let err = k.open_json(&other, sealed.clone()).unwrap_err();
            assert!(matches!(err, Error::Undecryptable { .. }), "{err}");
            assert!(err.to_string().contains(&other.to_string()), "{err}");
        }
        let err = DataKey::generate().open_json(&ARGS, sealed).unwrap_err();
        assert!(matches!(err, Error::Undecryptable { .. }));
    }

    /// Any flipped bit of a sealed value is detected.
    #[test]
    fn tampering_is_detected() {
        let k = DataKey::generate();
        let sealed = k.seal(b"aad", b"hello world");
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert!(k.open(b"aad", &t).is_none(), "byte {i}");
        }
        assert!(k.open(b"aad", &sealed[..10]).is_none());
    }

    /// Values that are not sealed (written before encryption was turned on) read as they are.
    #[test]
    fn plain_values_pass_through() {
        let k = DataKey::generate();
        let v = json!({"a": 1, "ordo:enc:v1": "x"});
        assert_eq!(k.open_json(&ARGS, v.clone()).unwrap(), v);
        assert_eq!(k.open_text(&ARGS, "plain".to_owned()).unwrap(), "plain");
    }

    /// A marker with a body that is not base64 is a clear error, not a panic.
    #[test]
    fn malformed_envelopes_are_errors() {
        let k = DataKey::generate();
        let err = k.open_json(&ARGS, json!({JSON_TAG: "!!!"})).unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        let err = k.open_text(&ARGS, format!("{TEXT_PREFIX}AAAA")).unwrap_err();
        assert!(matches!(err, Error::Undecryptable { .. }), "{err}");
    }

    /// A value sealed under an earlier subkey (another process, or before the salt changed) still opens.
    #[test]
    fn values_of_other_subkeys_open() {
        let root = random();
        let writer = DataKey::from_bytes(root);
        let reader = DataKey::from_bytes(root);
        let sealed = writer.seal(b"aad", b"x");
        assert_eq!(reader.open(b"aad", &sealed).unwrap(), b"x");
        writer.sealer.lock().unwrap().uses = SUBKEY_USES;
        let later = writer.seal(b"aad", b"y");
        assert_ne!(sealed[..SALT_LEN], later[..SALT_LEN]);
        assert_eq!(writer.open(b"aad", &sealed).unwrap(), b"x");
        assert_eq!(reader.open(b"aad", &later).unwrap(), b"y");
    }
}
