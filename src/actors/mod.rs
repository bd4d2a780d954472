//! Actors: the DB actor that owns the connection pool, and the refresh actors of the token path;
//! beside them, the threads that keep a connection of their own (the liveness lock, the change
//! feed).

pub mod audit;
pub mod change_feed;
pub mod db;
pub mod liveness;
pub(crate) mod tokens;
