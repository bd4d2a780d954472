//! DIRAC wire formats: the Python value model, DEncode, JEncode, MixedEncode,
//! DISET framing and Tornado form bodies; and, with the `client` feature (on by
//! default), a DISET client.
//!
//! No server, no actix, no database: the service, the load generator and the
//! fuzz targets (which build without `client`) share it.

#[cfg(feature = "client")]
pub mod client;
pub mod dencode;
mod error;
pub mod form;
pub mod frame;
pub mod jencode;
pub mod mixed;
#[cfg(test)]
mod test_values;
mod value;

pub use error::{DecodeError, EncodeError};
pub use value::Value;

/// Nesting limit for both decoders. Python's own limit is its recursion limit
/// (~1000 frames); real DIRAC messages are at most a handful of levels deep,
/// and a low bound keeps stack use and `Drop` recursion of hostile input small.
pub const MAX_DEPTH: usize = 64;

/// Longest excerpt of peer-supplied text an error message may quote.
const QUOTE_CAP: usize = 40;

/// Caps quoted input so that error messages (which end up in logs and in
/// S_ERROR replies) never echo large or binary peer data.
fn quote(text: &str) -> String {
    let mut out: String = text.chars().take(QUOTE_CAP).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}
