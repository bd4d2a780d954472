//! Actors: the DB actor that owns the connection pool (the per-credential refresh actors of the
//! token path come with getToken).

pub mod db;
