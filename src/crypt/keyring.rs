//! The process's keyring: the master keys from `ORDO_MASTER_KEYS` and the cache of unwrapped data keys.
//!
//! One keyring per process, installed at start by each role: the data passes through many layers (the queue,
//! the engine, loads, webhooks) that already take an executor and an account, and a value is sealed or opened
//! where it is written or decoded, so a process-wide keyring spares every signature on the way a parameter.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, OnceLock, RwLock};

use ring::aead::LessSafeKey;
use serde_json::Value;
use sqlx::PgPool;

use super::envelope::{aes_key, is_sealed_json, is_sealed_text, open_with, seal_with, unb64, DataKey};
use super::{Aad, Error, Result};

/// One master key: its id (stored beside each data key it wraps) and the AES-256 key.
struct MasterKey {
    id: String,
    key: LessSafeKey,
}

/// The master keys of `ORDO_MASTER_KEYS` (`<id>:<base64 of 32 bytes>[,…]`): the first wraps new data keys, all
/// unwrap.
#[derive(Clone)]
pub struct MasterKeys(Arc<Vec<MasterKey>>, Arc<str>);

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.0.iter().map(|k| k.id.as_str()).collect();
        write!(f, "MasterKeys({ids:?}, ***)")
    }
}

impl FromStr for MasterKeys {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (i, entry) in s.split(',').map(str::trim).enumerate() {
            let bad = |why: &str| Error::InvalidMasterKeys(format!("entry {} {why}", i + 1));
            let (id, b64) = entry.split_once(':').ok_or_else(|| bad("is not <id>:<base64 key>"))?;
            if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(bad("has an id that is not 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'"));
            }
            // Accept keys as `openssl rand -base64 32` prints them (padded) or unpadded.
            let bytes = unb64(b64.trim_end_matches('=')).ok_or_else(|| bad("has a key that is not base64"))?;
            let bytes: [u8; 32] = bytes
                .try_into()
                .map_err(|_| bad("has a key that is not 32 bytes (generate one with `openssl rand -base64 32`)"))?;
            if keys.iter().any(|k| k.id == id) {
                return Err(bad("repeats an id"));
            }
            keys.push(MasterKey {
                id: id.to_owned(),
                key: aes_key(&bytes),
            });
        }
        Ok(MasterKeys(Arc::new(keys), Arc::from(s)))
    }
}

/// The associated data of a wrapped data key: a wrapped key copied to another account does not unwrap.
fn wrap_aad(account: &str) -> Vec<u8> {
    Aad::new(account, "account_key", &[], "wrapped").bytes()
}

impl MasterKeys {
    /// The keys as `ORDO_MASTER_KEYS` spells them, for child processes.
    pub fn to_env(&self) -> String {
        self.1.to_string()
    }

    /// The id of the key that wraps new data keys.
    pub fn current_id(&self) -> &str {
        &self.0[0].id
    }

    /// Wraps a data key of `account` under the first master key: `(key id, wrapped bytes)`.
    pub(super) fn wrap(&self, account: &str, key: &DataKey) -> (String, Vec<u8>) {
        let m = &self.0[0];
        (m.id.clone(), seal_with(&m.key, &wrap_aad(account), key.secret()))
    }

    /// Unwraps a data key of `account` wrapped under the master key `key_id`.
    pub(super) fn unwrap(&self, account: &str, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        let m = self
            .0
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| Error::UnknownMasterKey {
                account: account.to_owned(),
                key_id: key_id.to_owned(),
            })?;
        let unwrap_err = || Error::Unwrap {
            account: account.to_owned(),
            key_id: key_id.to_owned(),
        };
        let secret = open_with(&m.key, &wrap_aad(account), wrapped).ok_or_else(unwrap_err)?;
        let secret: [u8; 32] = secret.try_into().map_err(|_| unwrap_err())?;
        Ok(DataKey::from_bytes(secret))
    }
}

struct Keyring {
    masters: MasterKeys,
    pool: PgPool,
    keys: RwLock<HashMap<String, Arc<DataKey>>>,
}

static KEYRING: OnceLock<Keyring> = OnceLock::new();

/// Installs the process's keyring: `masters` seal and open, `pool` loads and creates data keys. Without master
/// keys, logs once that customer data is stored in plain text. A second call changes nothing.
pub fn install(masters: Option<MasterKeys>, pool: &PgPool) {
    match masters {
        Some(masters) => {
            let _ = KEYRING.set(Keyring {
                masters,
                pool: pool.clone(),
                keys: RwLock::new(HashMap::new()),
            });
        }
        None => tracing::warn!(
            "ORDO_MASTER_KEYS is not set: job args, results and errors, entity and event attributes, load records \
             and webhook secrets are stored in plain text"
        ),
    }
}

/// Whether this process seals customer data.
pub fn enabled() -> bool {
    KEYRING.get().is_some()
}

fn ring() -> Option<&'static Keyring> {
    KEYRING.get()
}

impl Keyring {
    fn cached(&self, account: &str) -> Option<Arc<DataKey>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(account)
            .cloned()
    }

    fn remember(&self, account: &str, key: Arc<DataKey>) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(account.to_owned(), key);
    }

    fn forget(&self, account: &str) {
        self.keys.write().unwrap_or_else(|p| p.into_inner()).remove(account);
    }
}

/// Loads the data key of `account` into the cache (creating it, committed, if the account has none yet), so that
/// the sealing and opening functions can run; a no-op when cached or without master keys.
pub async fn prepare(account: &str) -> Result<()> {
    let Some(ring) = ring() else {
        return Ok(());
    };
    if ring.cached(account).is_some() {
        return Ok(());
    }
    let key = super::store::load_or_create(&ring.pool, &ring.masters, account).await?;
    ring.remember(account, Arc::new(key));
    Ok(())
}

/// The master keys, for creating and rotating data keys.
pub(super) fn masters() -> Option<MasterKeys> {
    ring().map(|r| r.masters.clone())
}

/// Puts a data key created with its account into the cache, once that transaction committed.
pub(super) fn remember(account: &str, key: Arc<DataKey>) {
    if let Some(ring) = ring() {
        ring.remember(account, key);
    }
}

/// Drops a destroyed data key from this process's cache.
pub(super) fn forget(account: &str) {
    if let Some(ring) = ring() {
        ring.forget(account);
    }
}

fn key_for(ring: &Keyring, aad: &Aad<'_>) -> Result<Arc<DataKey>> {
    ring.cached(aad.account).ok_or_else(|| Error::NoDataKey {
        account: aad.account.to_owned(),
    })
}

/// Seals a JSON value of the row `aad` (after [`prepare`]); returns it as it is without master keys.
pub fn seal_json(aad: &Aad<'_>, v: &Value) -> Result<Value> {
    match ring() {
        None => Ok(v.clone()),
        Some(ring) => Ok(key_for(ring, aad)?.seal_json(aad, v)),
    }
}

/// Opens a JSON value of the row `aad` (after [`prepare`]); a plain value is returned as it is.
pub fn open_json(aad: &Aad<'_>, v: Value) -> Result<Value> {
    if !is_sealed_json(&v) {
        return Ok(v);
    }
    let ring = ring().ok_or_else(|| Error::NoMasterKey { what: aad.to_string() })?;
    key_for(ring, aad)?.open_json(aad, v)
}

/// Seals a text value of the row `aad` (after [`prepare`]); returns it as it is without master keys.
pub fn seal_text(aad: &Aad<'_>, s: &str) -> Result<String> {
    match ring() {
        None => Ok(s.to_owned()),
        Some(ring) => Ok(key_for(ring, aad)?.seal_text(aad, s)),
    }
}

/// Opens a text value of the row `aad` (after [`prepare`]); a plain value is returned as it is.
pub fn open_text(aad: &Aad<'_>, s: String) -> Result<String> {
    if !is_sealed_text(&s) {
        return Ok(s);
    }
    let ring = ring().ok_or_else(|| Error::NoMasterKey { what: aad.to_string() })?;
    key_for(ring, aad)?.open_text(aad, s)
}

#[cfg(test)]
mod tests {
    use super::super::envelope::b64;
    use super::*;

    fn keys(s: &str) -> MasterKeys {
        s.parse().unwrap()
    }

    /// `ORDO_MASTER_KEYS` takes `id:base64` entries, padded or not; anything else is refused with a reason.
    #[test]
    fn master_keys_parse_and_refuse() {
        let k = b64(&[7u8; 32]);
        let ks = keys(&format!("new:{k}=,old:{k}"));
        assert_eq!(ks.current_id(), "new");
        for (bad, why) in [
            ("", "not <id>"),
            ("k1", "not <id>"),
            (":AAAA", "id"),
            ("k1:not base64!", "not base64"),
            ("k1:AAAA", "32 bytes"),
            (&format!("a:{k},a:{k}"), "repeats"),
        ] {
            let err = bad.parse::<MasterKeys>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains(&k), "the key must not be echoed: {err}");
        }
    }

    /// A data key wrapped under one master key unwraps under any list that holds that key, and under no other
    /// key or account.
    #[test]
    fn wrapped_keys_unwrap_by_id_and_account_only() {
        let (a, b) = (b64(&[1u8; 32]), b64(&[2u8; 32]));
        let old = keys(&format!("old:{a}"));
        let both = keys(&format!("new:{b},old:{a}"));
        let dk = DataKey::generate();
        let (id, wrapped) = old.wrap("acme", &dk);
        assert_eq!(id, "old");
        let back = both.unwrap("acme", &id, &wrapped).unwrap();
        assert_eq!(back.secret(), dk.secret());
        let (id2, rewrapped) = both.wrap("acme", &back);
        assert_eq!(id2, "new");
        assert_eq!(both.unwrap("acme", "new", &rewrapped).unwrap().secret(), dk.secret());
        assert!(matches!(both.unwrap("other", &id, &wrapped), Err(Error::Unwrap { .. })));
        assert!(matches!(
            keys(&format!("new:{b}")).unwrap("acme", "old", &wrapped),
            Err(Error::UnknownMasterKey { .. })
        ));
        assert!(matches!(
            keys(&format!("old:{b}")).unwrap("acme", "old", &wrapped),
            Err(Error::Unwrap { .. })
        ));
    }
}
