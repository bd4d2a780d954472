//! Encryption at rest: AES-256-GCM under a keyring of named keys.
//!
//! Every sealed value is bound, through the GCM associated data, to the (user ID, provider,
//! column) it was written for, so a ciphertext copied into another row or another column does not
//! decrypt. The keyring file format is documented in config/README.md ("Encryption keyring").

mod keyring;

pub use keyring::{Keyring, KeyringFile, SharedKeyring};

use thiserror::Error;

/// Which token of a row a ciphertext belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenColumn {
    RefreshToken,
    AccessToken,
}

impl TokenColumn {
    /// The column's name, as errors and the `tokens verify` report name it.
    pub fn label(self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::AccessToken => "access_token",
        }
    }
}

/// Where a sealed value lives; the associated data of its encryption.
#[derive(Clone, Copy, Debug)]
pub struct SealContext<'a> {
    pub user_id: &'a str,
    pub provider: &'a str,
    pub column: TokenColumn,
}

impl SealContext<'_> {
    /// Length-prefixed so that ("ab", "c") and ("a", "bc") never give the same bytes.
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.user_id.len() + self.provider.len());
        aad.extend_from_slice(b"tokenmanager/v1");
        for part in [self.user_id, self.provider, self.column.label()] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Errors never carry key material or plaintext.
#[derive(Debug, Error)]
pub enum CryptoError {
    #[error("cannot read the encryption keyring {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the encryption keyring {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encryption keyring {path}, line {line}: {problem}")]
    Format {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("encryption keyring {path} holds no key")]
    Empty { path: String },
    #[error("the keyring has no key '{0}'")]
    UnknownKey(String),
    #[error(
        "a stored {0} does not decrypt: it was altered, moved from another row, or sealed under another key"
    )]
    Tampered(&'static str),
    #[error("a stored {0} has an unknown format")]
    BadFormat(&'static str),
}
