//! What the fuzz targets (`fuzz_targets/`) share: the equality of their round-trip properties.
//! The codecs under test are the `dirac-wire` crate, without its DISET client, so fuzzing does
//! not build OpenSSL (nor the service) with sanitizers.

use dirac_wire::Value;

/// DEncode rebuilds `d.ddde±X` floats as `d.ddd * 10**X` (as DIRAC does),
/// which may move the last bits, flush subnormals to 0 or push the largest
/// finite values to infinity.
fn float_close(a: f64, b: f64, exact: bool) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    if exact {
        return false;
    }
    if a.is_infinite() || b.is_infinite() {
        return a.signum() == b.signum() && a.abs().min(b.abs()) > 1.7e308;
    }
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()) + 1e-300
}

/// Structural equality with NaN equal to itself; floats compared exactly
/// unless `exact` is false.
pub fn same(a: &Value, b: &Value, exact: bool) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => float_close(*x, *y, exact),
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q, exact))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| same(k1, k2, exact) && same(v1, v2, exact))
        }
        _ => a == b,
    }
}

/// Whether a dict in `v` has a float in a key. Keys are merged by value when decoded (Python's
/// dict); DEncode's rebuilt floats can bring two keys together, as they would in DIRAC.
pub fn has_float_key(v: &Value) -> bool {
    fn is_or_holds_float(v: &Value) -> bool {
        match v {
            Value::Float(_) => true,
            Value::Tuple(items) => items.iter().any(is_or_holds_float),
            _ => false,
        }
    }
    match v {
        Value::List(items) | Value::Tuple(items) => items.iter().any(has_float_key),
        Value::Dict(items) => items
            .iter()
            .any(|(k, v)| is_or_holds_float(k) || has_float_key(k) || has_float_key(v)),
        _ => false,
    }
}

/// JEncode writes years below 1000 unpadded (like Python), and Python's
/// `strptime` cannot read them back.
pub fn has_short_year(v: &Value) -> bool {
    match v {
        Value::DateTime { year, .. } | Value::Date { year, .. } => *year < 1000,
        Value::List(items) | Value::Tuple(items) => items.iter().any(has_short_year),
        Value::Dict(items) => items
            .iter()
            .any(|(k, v)| has_short_year(k) || has_short_year(v)),
        _ => false,
    }
}
