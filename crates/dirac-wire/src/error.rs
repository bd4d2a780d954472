use thiserror::Error;

/// Why a DEncode or JEncode payload was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload truncated")]
    Truncated,
    #[error("invalid data at byte {offset}: {reason}")]
    Invalid { offset: usize, reason: &'static str },
    #[error("nesting deeper than {limit} levels")]
    TooDeep { limit: usize },
    /// DIRAC only instantiates `JSerializable` classes; none exist in the
    /// TokenManager protocol, so every other `__dCls` is refused (this also
    /// covers the `{"__dCls": "exit", "__dMod": "sys"}` exploit).
    #[error("refusing to deserialize class {0:?}")]
    UnknownClass(String),
}

/// Why a value cannot be written in the requested encoding (Python raises
/// `TypeError` in the same places).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    #[error("Object of type {0} is not JSON serializable")]
    NotSerializable(&'static str),
    #[error("keys must be str, int, float, bool or None, not {0}")]
    BadKey(&'static str),
}
