//! Protocol- and storage-free types and rules: what a token is, how DIRAC's token dictionaries
//! are read, who may call what (`policy`), and the secret wrapper that keeps token values out of
//! logs.

pub mod policy;
mod secret;
mod token;

pub use secret::Secret;
pub use token::{CredentialState, NewToken, TokenDictError, unix_now};
