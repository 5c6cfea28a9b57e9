//! Master keys (`ORDO_MASTER_KEYS`): parsed, and used to wrap and unwrap the accounts' data keys.

use std::str::FromStr;
use std::sync::Arc;

use ring::aead::LessSafeKey;

use super::envelope::{aes_key, open_with, seal_with, unb64, DataKey};
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
