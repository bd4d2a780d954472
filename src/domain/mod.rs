//! Protocol- and storage-free types and rules: what a token is, how DIRAC's token dictionaries
//! are read, DIRAC's registry of users, groups and hosts, who may call what (`policy`), and the
//! secret wrapper that keeps token values out of logs.

pub mod audit;
pub mod policy;
pub mod registry;
pub mod scopes;
mod secret;
mod time;
mod token;

pub use secret::Secret;
pub use time::utc_timestamp;
pub use token::{CredentialState, NewToken, TokenDictError, jwt_expiry, unix_now};
