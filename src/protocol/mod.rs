//! Protocol front-ends: each decodes its wire format into a `service::CallContext`, a method and
//! its arguments, and encodes the result. One folder per wire format.

pub mod dirac;
pub mod json;
