//! Actors: the DB actor that owns the connection pool, and the refresh actors of the token path.

pub mod db;
pub mod liveness;
pub(crate) mod tokens;
