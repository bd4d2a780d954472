//! Protocol- and storage-free types: what a token is, how DIRAC's token dictionaries are read,
//! and the secret wrapper that keeps token values out of logs.

mod secret;
mod token;

pub use secret::Secret;
pub use token::{CredentialState, NewToken, TokenDictError, unix_now};
