//! The process's keyring: the master keys from `ORDO_MASTER_KEYS` and the cache of unwrapped data keys.
//!
//! One keyring per process, installed at start by each role: the data passes through many layers (the queue,
//! the engine, loads, webhooks) that already take an executor and an account, and a value is sealed or opened
//! where it is written or decoded, so a process-wide keyring spares every signature on the way a parameter.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::envelope::{is_sealed_json, is_sealed_text, DataKey};
use super::master::MasterKeys;
use super::{Aad, Error, Result};

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
fn masters() -> Option<MasterKeys> {
    ring().map(|r| r.masters.clone())
}

/// A data key for a new account, `None` without master keys: seal its first values with it, store it with
/// [`store_account_key`] in the transaction that creates the account, and [`remember`] it after the commit.
pub fn new_account_key() -> Option<Arc<DataKey>> {
    masters().map(|_| Arc::new(DataKey::generate()))
}

/// Stores a data key from [`new_account_key`] inside the transaction that creates the account, so the key exists
/// exactly when the account does.
pub async fn store_account_key(conn: &mut PgConnection, account: &str, key: &DataKey) -> Result<()> {
    match masters() {
        Some(masters) => super::store::insert_key(conn, &masters, account, key).await,
        None => Ok(()),
    }
}

/// Destroys the data key of `account` (inside the caller's transaction) and drops it from this process's cache:
/// whatever of the account is left, in the database or its backups, can no longer be decrypted.
pub async fn destroy_account_key(conn: &mut PgConnection, account: &str) -> Result<bool> {
    let gone = super::store::delete_key(conn, account).await?;
    forget(account);
    Ok(gone)
}

/// Caches a key from [`new_account_key`] once the transaction that stored it committed.
pub fn remember(account: &str, key: Arc<DataKey>) {
    if let Some(ring) = ring() {
        ring.remember(account, key);
    }
}

/// Drops a destroyed data key from this process's cache.
fn forget(account: &str) {
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
