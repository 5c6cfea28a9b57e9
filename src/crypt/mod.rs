//! Encryption at rest: customer data (job args, results and error messages, entity and event attributes, load
//! records and results, webhook secrets) is sealed with AES-256-GCM under a data key of its account, and each
//! data key is stored wrapped by a master key (`ORDO_MASTER_KEYS`, envelope encryption). Owns `account_key`.
//!
//! Invariants:
//! - a sealed value carries its format version in its marker, so values written before encryption was turned on
//!   (plain) stay readable, and plain and sealed rows coexist;
//! - a value's associated data is its row's identity ([`Aad`]: account, table, row, field), so a ciphertext copied
//!   to another row, field or account fails to decrypt instead of reading as that row's data;
//! - a data key is created in a committed transaction of its own (or with its account) before anything is sealed
//!   with it, so no value is ever sealed under a key that was rolled back;
//! - unwrapped data keys are cached per process ([`prepare`] loads one), so a hot path costs one AES-GCM
//!   operation per value and no database round trip.
//!
//! Without master keys nothing is sealed: [`seal_json`] and [`seal_text`] return their input.
//! A process serves one database: the cache is keyed by account id alone.

mod envelope;
mod keyring;
mod master;
mod store;

use std::fmt;

pub use envelope::{is_sealed_json, is_sealed_text, DataKey, JSON_TAG, TEXT_PREFIX};
pub use keyring::{
    destroy_account_key, enabled, install, new_account_key, open_json, open_text, prepare, remember, seal_json,
    seal_text, store_account_key,
};
pub use master::MasterKeys;
pub use store::{rotate, Rotated};

/// Errors of encryption at rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `ORDO_MASTER_KEYS` could not be parsed.
    #[error("invalid ORDO_MASTER_KEYS: {0}")]
    InvalidMasterKeys(String),
    /// A sealed value was read by a process without master keys.
    #[error("{what} is encrypted, but ORDO_MASTER_KEYS is not set")]
    NoMasterKey {
        /// The value.
        what: String,
    },
    /// The account's data key is wrapped by a master key this process does not hold.
    #[error("the data key of account {account} is wrapped by master key {key_id:?}, which ORDO_MASTER_KEYS lacks")]
    UnknownMasterKey {
        /// The account.
        account: String,
        /// The id the key was wrapped under.
        key_id: String,
    },
    /// The wrapped data key does not open under its master key (altered, or moved from another account).
    #[error("the data key of account {account} does not unwrap under master key {key_id:?}")]
    Unwrap {
        /// The account.
        account: String,
        /// The master key tried.
        key_id: String,
    },
    /// The account has no data key: it does not exist, or was deleted.
    #[error("account {account} has no data key (unknown or deleted account)")]
    NoDataKey {
        /// The account.
        account: String,
    },
    /// The ciphertext failed authentication: altered, or copied from another row, field or account.
    #[error("{what} cannot be decrypted: the ciphertext was altered or belongs to another row or account")]
    Undecryptable {
        /// The value.
        what: String,
    },
    /// The value has the sealed marker but not the sealed shape.
    #[error("{what} is not a valid sealed value: {reason}")]
    Malformed {
        /// The value.
        what: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Any database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The identity of a sealed value, bound to it as associated data: the account, the table (the logical one: a
/// job keeps its identity when it moves to `job_history`), the row's key and the field.
#[derive(Debug, Clone, Copy)]
pub struct Aad<'a> {
    /// The owning account.
    pub account: &'a str,
    /// The table.
    pub table: &'a str,
    /// The row's key, one part per key column.
    pub row: &'a [&'a str],
    /// The column (and element, for arrays).
    pub field: &'a str,
}

impl<'a> Aad<'a> {
    /// The identity of `field` of the row `row` of `table` in `account`.
    pub fn new(account: &'a str, table: &'a str, row: &'a [&'a str], field: &'a str) -> Self {
        Aad {
            account,
            table,
            row,
            field,
        }
    }

    /// The bytes authenticated with the value: every part length-prefixed, so no two identities share bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"ordo-aad-v1");
        let parts = [self.account, self.table, self.field]
            .into_iter()
            .chain(self.row.iter().copied());
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p.as_bytes());
        }
        out
    }
}

impl fmt::Display for Aad<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} {} (account {})",
            self.field,
            self.table,
            self.row.join("/"),
            self.account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identities that differ in any part, or only in where one part ends, have different bytes.
    #[test]
    fn aad_bytes_are_unambiguous() {
        let a = Aad::new("acme", "job", &["1"], "args").bytes();
        for other in [
            Aad::new("acme", "job", &["2"], "args"),
            Aad::new("acme", "job", &["1"], "result"),
            Aad::new("other", "job", &["1"], "args"),
            Aad::new("acme", "event", &["1"], "args"),
            Aad::new("acme", "job", &["1", ""], "args"),
        ] {
            assert_ne!(a, other.bytes(), "{other}");
        }
        assert_ne!(
            Aad::new("a", "entity", &["x|y", "z"], "attributes").bytes(),
            Aad::new("a", "entity", &["x", "y|z"], "attributes").bytes()
        );
    }
}
